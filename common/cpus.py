"""Which cores the worker has to itself, and which the other services share.

When the pipeline runs on the CPU, every core the gateway, Redis or the uploader takes from it in
the middle of an operator stalls the render, and a render thread the kernel moves from core to core
starts cold each time. The worker's event loop belongs with its render too: the render needs the
GIL between operators, and a loop thread preempted on a busy shared core while it holds the GIL
(a Redis write that wakes Redis, say) stalls the render until it runs again. So the whole worker
(its render thread, the operator threads torch starts from it, and the loop that feeds it) can be
pinned to cores of its own (``DARKROOM_RENDER_CPUS``), and ``darkroom up`` pins every other
service to the remaining cores. The same placement ``taskset``/``numactl`` or torch's ``run_cpu``
launcher would give a CPU inference process, done by Darkroom itself so that ``darkroom up`` needs
nothing else. Linux only (``sched_setaffinity``); elsewhere nothing is pinned.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_cpu_list(text: str) -> frozenset[int]:
    """A CPU list as Linux writes them (``taskset -c``, ``Cpus_allowed_list``): ``0-3,6``."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _RANGE.match(part)
        if match is None:
            raise ValueError(f"{part!r} is not a CPU number or range (write it like 0-3,6)")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"{part!r}: a range runs from the lower CPU to the higher")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int]) -> str:
    """The inverse of :func:`parse_cpu_list`, with runs folded into ranges."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            first, last = ordered[start], ordered[index - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = index
    return ",".join(parts)


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity")


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on (a container's cpuset, taskset), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def machine_cpus() -> frozenset[int]:
    """Every CPU of the machine, whether or not this process may use it now."""
    return frozenset(range(os.cpu_count() or 1))


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Pin every thread a process has now; the threads it starts later inherit the set. A set
    the process may not use (outside its container's CPUs) is refused by name."""
    tasks = Path(f"/proc/{pid}/task")
    tids = [int(tid.name) for tid in tasks.iterdir()] if tasks.is_dir() else [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except OSError as error:
            raise ValueError(
                f"cannot run on CPUs {format_cpu_list(cpus)}: {error.strerror} "
                "(outside the CPUs this container may use?)"
            ) from error


@dataclass(frozen=True)
class Placement:
    render: frozenset[int]
    services: frozenset[int]


def placement(render_threads: int, render_cpus: str | None = None) -> Placement | None:
    """Where ``darkroom up`` puts things: the worker on ``render_cpus`` when given (empty: no
    placement), else on the first ``render_threads`` available cores; the services on the rest.
    None when there is nothing to split (one core, or the render wants them all)."""
    if not can_pin():
        return None
    cpus = available_cpus()
    if render_cpus is None:
        if not 0 < render_threads < len(cpus):
            return None
        render = frozenset(sorted(cpus)[:render_threads])
    else:
        # As given, never trimmed: CPUs this process may not use are the worker's to refuse.
        render = parse_cpu_list(render_cpus)
    services = cpus - render
    if not render or not services or not render <= cpus:
        return None
    return Placement(render=render, services=services)
