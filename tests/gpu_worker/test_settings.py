"""Worker settings refuse what could not work, at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.cpus import available_cpus, can_pin, format_cpu_list, machine_cpus
from gpu_worker.settings import WorkerSettings
from tests.support.waiting import wait_for


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


@pytest.mark.skipif(
    not can_pin() or len(available_cpus()) < 2, reason="needs sched_setaffinity and 2 CPUs"
)
def test_the_worker_pins_itself_render_and_loop_alike(tmp_path: Path) -> None:
    """Started alone (no ``darkroom up`` to place it), the worker moves every thread it has onto
    its render CPUs first thing, and the threads it starts later inherit them."""
    last = max(available_cpus())
    worker = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "worker"],
        cwd=tmp_path,
        env=os.environ | {"DARKROOM_RENDER_CPUS": str(last), "REDIS_URL": "redis://127.0.0.1:1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tasks = Path(f"/proc/{worker.pid}/task")

    def placed() -> list[set[int]] | None:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.returncode})")
        cpus = [os.sched_getaffinity(int(tid.name)) for tid in tasks.iterdir()]
        return cpus if cpus and all(c == {last} for c in cpus) else None

    try:
        wait_for(placed, timeout_s=120, what="the worker to pin itself")
        time.sleep(1)  # threads started meanwhile (Redis retries, torch) stay there too
        assert placed()
    finally:
        worker.kill()
        worker.wait()
