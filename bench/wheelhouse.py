"""Wheels for a GPU machine that has Python, torch and CUDA but no network.

Such a machine (a cloud image built for PyTorch, an air-gapped node) lacks Darkroom's service
packages: starlette, redis, pydantic, diffusers and the like. This writes, into one folder, a
wheel of every package uv.lock pins for the service and the worker (the default and ``worker``
groups) that the machine does not already have, at the locked version, for the machine's Python
on x86-64 Linux. What the machine has (torch and CUDA above all) is used as it is there.

    # on the GPU machine: python3 -m pip list --format=freeze > have.txt
    python3 bench/wheelhouse.py --have have.txt --python 3.12 --dest wheelhouse [--for families]

``bench/gpu_window.sh`` installs the folder there with ``pip install --no-index --no-deps
--target`` before it runs the GPU benchmarks. It needs ``uv`` and a Python with pip (the
project's venv has none); downloads use ``pip download`` from the index pip is configured with.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# Not carried even when missing: Django comes with the Swagger UI bundle's metadata but is never
# imported, and the machine's torch brings the CUDA libraries it was built with.
NOT_NEEDED = {"django", "sqlparse", "asgiref", "triton"}
TORCH_CUDA_PREFIXES = ("nvidia-", "cuda-")
# bench/gpu.py serves images through the whole stack: no PyAV (it encodes video only).
# bench/gpu_families.py and bench/previews.py render in one process (beside a redis-server for
# the previews), video included: PyAV, and none of the packages only the services import (S3,
# the HTTP server, the API docs).
LEFT_OUT = {
    "stack": {"av"},
    "families": {
        "aioboto3", "aiobotocore", "boto3", "botocore", "s3transfer", "jmespath",
        "drf-spectacular-sidecar", "uvicorn", "httptools", "watchfiles",
        "websockets", "python-multipart",
    },
}  # fmt: skip
# Linux x86-64 tags pip matches exactly: every manylinux level a locked wheel uses.
PLATFORMS = [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35)),
]


def normalized(name: str) -> str:
    """PEP 503's form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(python: str) -> dict[str, str]:
    """``name: version`` of every package uv.lock pins for the service and the worker on
    ``python`` under Linux x86-64 (the lock is universal: its markers are settled here)."""
    exported = subprocess.run(
        [
            "uv", "export", "--frozen", "--no-hashes", "--no-emit-project",
            "--no-default-groups", "--group", "worker", "--format", "requirements-txt",
        ],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    settled = subprocess.run(
        [
            "uv", "pip", "compile", "-", "--no-deps", "--no-header", "--no-annotate",
            "--no-python-downloads", "--python-version", python,
            "--python-platform", "x86_64-manylinux_2_28",
        ],
        input=exported, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    pins = {}
    for line in settled.splitlines():
        name, _, version = line.strip().partition("==")
        if version:
            pins[normalized(name)] = version
    return pins


def present(have: Path) -> set[str]:
    """The names in ``pip list --format=freeze`` output (or one name per line)."""
    names = set()
    for line in have.read_text().splitlines():
        name = re.split(r"[=<>@ ]", line.strip(), maxsplit=1)[0]
        if name and not name.startswith("#"):
            names.add(normalized(name))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--have", type=Path, required=True, help="the machine's pip list")
    parser.add_argument("--python", default="3.12", help="the machine's Python (major.minor)")
    parser.add_argument("--dest", type=Path, default=Path("wheelhouse"))
    parser.add_argument(
        "--for",
        dest="purpose",
        choices=sorted(LEFT_OUT),
        default="stack",
        help="stack: bench/gpu.py (slices 1, 2); families: slice 3 of bench/gpu_window.sh",
    )
    args = parser.parse_args()
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        sys.exit(f"{sys.executable} has no pip: run this with a Python that has (python3 ...)")

    pins = locked(args.python)
    have = present(args.have)
    wanted = {
        n: v
        for n, v in sorted(pins.items())
        if n not in have
        and n not in NOT_NEEDED | LEFT_OUT[args.purpose]
        and not n.startswith(TORCH_CUDA_PREFIXES)
    }
    args.dest.mkdir(parents=True, exist_ok=True)
    requirements = args.dest / "requirements.txt"
    requirements.write_text("".join(f"{n}=={v}\n" for n, v in wanted.items()))
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", args.python, "--implementation", "cp", *platforms,
            "--dest", str(args.dest), "--requirement", str(requirements),
        ],
        check=True,
    )  # fmt: skip
    wheels = sorted(args.dest.glob("*.whl"))
    size_mib = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wanted)} packages the machine lacks, {len(wheels)} wheels, {size_mib:.1f} MiB")
    for name in wanted:
        print(f"  {name}=={wanted[name]}")
    if len(wheels) != len(wanted):
        sys.exit(f"expected {len(wanted)} wheels in {args.dest}, found {len(wheels)}")


if __name__ == "__main__":
    main()
