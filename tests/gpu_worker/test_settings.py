"""Worker settings refuse what could not work, at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.cpus import available_cpus, can_pin, format_cpu_list, machine_cpus
from gpu_worker.settings import WorkerSettings


@pytest.mark.skipif(not can_pin(), reason="needs sched_setaffinity")
def test_render_cpus_read_as_a_cpu_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_RENDER_CPUS", format_cpu_list(available_cpus()))
    assert WorkerSettings().render_cpus == available_cpus()
    monkeypatch.setenv("DARKROOM_RENDER_CPUS", "")
    assert WorkerSettings().render_cpus == frozenset()


def test_render_cpus_the_machine_does_not_have_fail_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    beyond = max(machine_cpus()) + 1
    monkeypatch.setenv("DARKROOM_RENDER_CPUS", f"0,{beyond}-{beyond + 1}")
    message = f"CPUs {beyond}-{beyond + 1} are not on this machine" if can_pin() else "needs Linux"
    with pytest.raises(ValidationError, match=message):
        WorkerSettings()
