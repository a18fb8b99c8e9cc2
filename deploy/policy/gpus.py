"""The GPU policy: workers only on nodes whose driver runs uv.lock's CUDA, and pools on disjoint
GPU memory sizes."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

from manifests import GPU_MEMORY_LABEL, Build, Doc, gpu_memory_range, where

REPO = Path(__file__).resolve().parents[2]

# The NVIDIA driver each CUDA major version needs (CUDA's minor version compatibility: any
# 12.x runs on driver 525+, any 13.x on 580+). GPU Feature Discovery labels the node with the
# driver's major version.
MIN_DRIVER_BY_CUDA = {12: 525, 13: 580}
DRIVER_LABEL = "nvidia.com/cuda.driver-version.major"
GPU_RESOURCE = "nvidia.com/gpu"


def check_gpu_nodes(build: Build) -> Iterator[str]:
    """Workers only on drivers that run uv.lock's CUDA, pools on disjoint GPU sizes."""
    cuda = lockfile_cuda_major()
    ranges: list[tuple[float, float, str]] = []
    for doc, pod in build.pods():
        if not any(
            GPU_RESOURCE in c.get("resources", {}).get("limits", {}) for c in pod["containers"]
        ):
            continue
        terms = (
            pod.get("affinity", {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [])
        )
        if not terms:
            yield f"{where(doc)}: requests a GPU without required node affinity"
            continue
        for term in terms:
            expressions = term.get("matchExpressions", [])
            if cuda is not None:
                yield from _driver(doc, expressions, cuda)
            low, high = gpu_memory_range(expressions)
            if low == 0:
                yield f"{where(doc)}: node term without a {GPU_MEMORY_LABEL} lower bound"
            ranges.append((low, high, doc["metadata"]["name"]))
    ranges.sort()
    for (low_a, high_a, a), (low_b, high_b, b) in zip(ranges, ranges[1:], strict=False):
        if a != b and low_b < high_a:
            yield (
                f"{a}, {b}: GPU memory ranges overlap ({low_a:g}-{high_a:g} and "
                f"{low_b:g}-{high_b:g} MiB): a pool takes the nodes "
                "only the other fits on"
            )


def _driver(doc: Doc, expressions: list[Doc], cuda: int) -> Iterator[str]:
    needed = MIN_DRIVER_BY_CUDA.get(cuda)
    if needed is None:
        yield (
            f"{where(doc)}: uv.lock's torch is built for CUDA {cuda}: add its minimum "
            "driver to MIN_DRIVER_BY_CUDA"
        )
        return
    found = [e for e in expressions if e["key"] == DRIVER_LABEL]
    wanted = {"key": DRIVER_LABEL, "operator": "Gt", "values": [str(needed - 1)]}
    if found != [wanted]:
        yield (
            f"{where(doc)}: uv.lock's torch needs CUDA {cuda}, driver {needed}+: every "
            f"node term needs {DRIVER_LABEL} Gt {needed - 1}, has {found}"
        )


def lockfile_cuda_major() -> int | None:
    """The CUDA major version uv.lock's torch is built for (None: a CPU-only torch)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    torch = packages.get("torch")
    if torch is None:
        return None
    majors: set[int] = set()
    for dependency in torch.get("dependencies", []):
        name = dependency["name"]
        if match := re.fullmatch(r"nvidia-.+-cu(\d+)", name):
            majors.add(int(match.group(1)))
        elif name == "cuda-toolkit":
            majors.add(int(packages[name]["version"].split(".")[0]))
    if len(majors) > 1:
        raise ValueError(f"uv.lock's torch names several CUDA versions: {sorted(majors)}")
    return majors.pop() if majors else None
