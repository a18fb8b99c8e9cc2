"""CPU lists read and written as Linux does, the render/services split, and real pinning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.cpus import (
    available_cpus,
    can_pin,
    format_cpu_list,
    machine_cpus,
    parse_cpu_list,
    pin_process,
    placement,
)

needs_two_cpus = pytest.mark.skipif(
    not can_pin() or len(available_cpus()) < 2, reason="needs sched_setaffinity and 2 CPUs"
)


def test_cpu_lists_read_and_written_like_taskset() -> None:
    assert parse_cpu_list("0-3,6") == {0, 1, 2, 3, 6}
    assert parse_cpu_list(" 5, 1-2 ,") == {1, 2, 5}
    assert parse_cpu_list("") == frozenset()
    assert format_cpu_list(frozenset({0, 1, 2, 3, 6, 8, 9})) == "0-3,6,8-9"
    assert format_cpu_list(frozenset()) == ""


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "1-", "0,,x"])
def test_a_bad_cpu_list_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="CPU"):
        parse_cpu_list(text)


@needs_two_cpus
def test_the_render_gets_the_first_cores_and_the_services_the_rest() -> None:
    cpus = sorted(available_cpus())
    split = placement(1)
    assert split is not None
    assert split.render == {cpus[0]} and split.services == set(cpus[1:])
    chosen = placement(1, str(cpus[-1]))
    assert chosen is not None and chosen.render == {cpus[-1]}
    assert chosen.services == set(cpus[:-1])


@needs_two_cpus
def test_no_split_when_there_is_nothing_to_split() -> None:
    assert placement(len(available_cpus())) is None  # the render wants every core
    assert placement(0) is None and placement(-1) is None  # the worker refuses these itself
    beyond = str(max(machine_cpus()) + 1)
    assert placement(1, f"0,{beyond}") is None  # not trimmed: the worker refuses it, by name
    assert placement(1, "") is None  # turned off
    assert placement(1, format_cpu_list(available_cpus())) is None  # nothing left for services


@needs_two_cpus
def test_a_process_and_the_threads_it_starts_stay_on_their_cores() -> None:
    first = min(available_cpus())
    # The child waits until pinned, then reports the cores of a thread it starts afterwards.
    code = (
        "import os, sys, threading; sys.stdin.readline(); "
        "t = threading.Thread(target=lambda: print(sorted(os.sched_getaffinity(0)))); "
        "t.start(); t.join()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        pin_process(child.pid, frozenset({first}))
        assert os.sched_getaffinity(child.pid) == {first}
        out, _ = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
    assert out.strip() == f"[{first}]"


@needs_two_cpus
def test_a_process_pinned_outside_the_cpus_it_may_use_says_so() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ValueError, match="cannot run on CPUs"):
            pin_process(child.pid, frozenset({max(machine_cpus()) + 1}))
        assert os.sched_getaffinity(child.pid) == available_cpus()  # left where it was
    finally:
        child.kill()
