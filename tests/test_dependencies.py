"""Every third-party module the services import is a dependency the images install: the project's
own dependencies, plus the ``worker`` group for ``gpu_worker``. A dev-only package imported by a
service works here and crashes the service in its image."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("common", "gateway", "uploader", "notifier", "gpu_worker", "darkroom_client")


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found is not None, requirement
    return re.sub(r"[-_.]+", "-", found.group(0)).lower()


def _closure(names: set[str]) -> set[str]:
    """The distributions and everything they require (what installing them brings)."""
    seen: set[str] = set()
    to_visit = list(names)
    while to_visit:
        name = to_visit.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            required = requires(name) or []
        except PackageNotFoundError:  # overridden away (pyproject's override-dependencies)
            continue
        for text in required:
            requirement = Requirement(text)
            # Extras not asked for, and other platforms' packages, are not installed.
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                to_visit.append(_name(requirement.name))
    return seen


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(SERVICES) - {"__future__"}


@pytest.mark.parametrize("package", SERVICES)
def test_a_service_imports_only_what_its_image_installs(package: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = {_name(r) for r in project["project"]["dependencies"]}
    if package == "gpu_worker":
        runtime |= {_name(r) for r in project["dependency-groups"]["worker"]}
    installed = _closure(runtime)
    distributions = packages_distributions()
    missing = {
        module: distributions.get(module, ["?"])
        for module in _imports(package)
        if not any(_name(d) in installed for d in distributions.get(module, []))
    }
    assert not missing, f"{package} imports modules its image does not install: {missing}"
