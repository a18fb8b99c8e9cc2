"""Checks a built overlay against what Darkroom's services expect, beyond what schemas can say.

Run by deploy/check as ``python deploy/check_manifests.py [--release] CRD_DIR BUILT.yaml...``
inside the project's environment, so the settings classes, the catalogue model and the Redis names
are the code's own. Besides these checks it runs the production policy (deploy/policy/)
and, on builds with the model-prefetch Job (gpu), the policy's self-test
(deploy/policy_self_test.py). It also writes each object of a CRD kind (KEDA, Prometheus Operator,
Gateway API) to CRD_DIR as JSON, for the schema checks that follow. ``--release``: images must be
pinned by digest. Exits 1 after printing every problem found.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from policy import check_policy
from policy_self_test import self_test

# The CLI imports every service's settings class before building one; so do we, so that
# known_prefixed_names() is the set the services accept.
import common.local  # noqa: F401
import gateway.settings  # noqa: F401
import gpu_worker.settings  # noqa: F401
import notifier.settings  # noqa: F401
import uploader.settings  # noqa: F401
from common.catalog import Catalog
from common.keys import Keys
from common.settings import DEFAULT_SECRETS_DIR, ENV_PREFIX, known_prefixed_names

Doc = dict[str, Any]

DEFAULT_DRAIN_GRACE_S = 60
# Time left after the drain for the process to release its job and exit.
MIN_EXIT_MARGIN_S = 10
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
# The roles that are stream consumers: scaled by KEDA on their streams, drained on SIGTERM.
CONSUMERS = {"worker", "uploader", "notifier"}
FORMULA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A formula term: a trigger, or a trigger divided by its route's batch size.
FORMULA_TERM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:/\s*([0-9]+)\s*)?")
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "gateway.networking.k8s.io/")


class Problems(list[str]):
    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")


def where(doc: Doc) -> str:
    meta = doc["metadata"]
    return f"{doc['kind']}/{meta.get('namespace', '-')}/{meta['name']}"


def containers(doc: Doc) -> Iterator[Doc]:
    spec = doc["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container_env(container: Doc, config_maps: dict[str, Doc]) -> dict[str, str | None]:
    """A container's environment: literal values, None where a Secret or the pod supplies it."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        # A secretRef's names are unknown until deploy time; the manifests use none.
        if ref is not None:
            env.update(config_maps[ref["name"]].get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value") if "valueFrom" not in var else None
    return env


def check_pod_specs(workloads: list[Doc], config_maps: dict[str, Doc], problems: Problems) -> None:
    known = known_prefixed_names()
    for doc in workloads:
        spec = doc["spec"]["template"]["spec"]
        # With service links on, a Service named redis injects REDIS_PORT=tcp://…, a setting.
        if spec.get("enableServiceLinks") is not False:
            problems.add(where(doc), "enableServiceLinks must be false")
        for container in containers(doc):
            if not _is_darkroom(container):
                continue
            env = container_env(container, config_maps)
            for name in sorted(n for n in env if n.upper().startswith(ENV_PREFIX)):
                if name not in known:
                    problems.add(
                        where(doc), f"{container['name']}: {name} is not a Darkroom setting"
                    )
            if container not in spec["containers"]:
                continue  # init containers (tiny-models) talk to no Redis
            check_secrets_mount(doc, container, env, problems)
            if _role(container) in CONSUMERS:
                grace_s = float(env.get("DARKROOM_DRAIN_GRACE_S") or DEFAULT_DRAIN_GRACE_S)
                termination_s = spec.get("terminationGracePeriodSeconds", 30)
                if termination_s < grace_s + MIN_EXIT_MARGIN_S:
                    problems.add(
                        where(doc),
                        f"terminationGracePeriodSeconds {termination_s} leaves less than "
                        f"{MIN_EXIT_MARGIN_S} s after the drain grace of {grace_s} s",
                    )


def check_secrets_mount(
    workload: Doc, container: Doc, env: dict[str, str | None], problems: Problems
) -> None:
    """Credentials reach the settings as files: a Secret mounted read-only at the secrets dir."""
    secrets_dir = env.get("DARKROOM_SECRETS_DIR") or str(DEFAULT_SECRETS_DIR)
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == secrets_dir and "secret" in volumes.get(mount["name"], {}):
            if not mount.get("readOnly"):
                problems.add(where(workload), f"{container['name']}: {secrets_dir} not read-only")
            return
    problems.add(where(workload), f"{container['name']}: no Secret mounted at {secrets_dir}")


def _is_darkroom(container: Doc) -> bool:
    return str(container.get("image", "")).split("/")[-1].startswith("darkroom-")


def _role(container: Doc) -> str:
    args = container.get("args") or [""]
    return str(args[0])


def load_catalog(workload: Doc, config_maps: dict[str, Doc], problems: Problems) -> Catalog | None:
    """The catalogue a workload reads: DARKROOM_MODELS_FILE inside its mounted ConfigMap."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    models_file = container_env(container, config_maps).get("DARKROOM_MODELS_FILE")
    if not models_file:
        return None
    path = Path(models_file)
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    volume = volumes.get(mounts.get(str(path.parent), ""))
    if volume is None or "configMap" not in volume:
        problems.add(where(workload), f"{models_file} is not on a mounted ConfigMap")
        return None
    data = config_maps[volume["configMap"]["name"]].get("data", {})
    if path.name not in data:
        problems.add(where(workload), f"its models ConfigMap has no {path.name}")
        return None
    try:
        return Catalog.model_validate(tomllib.loads(data[path.name]))
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        problems.add(where(workload), f"{models_file} is not a valid catalogue: {exc}")
        return None


def check_scaling(
    workloads: list[Doc],
    scaled_objects: list[Doc],
    config_maps: dict[str, Doc],
    problems: Problems,
) -> None:
    """Every stream a Deployment consumes has a trigger, and every trigger counts."""
    deployments = {d["metadata"]["name"]: d for d in workloads if d["kind"] == "Deployment"}
    routes_served: set[str] = set()
    all_routes: set[str] = set()
    for scaled in scaled_objects:
        target = deployments.get(scaled["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.add(where(scaled), "scaleTargetRef names no Deployment of this build")
            continue
        container = target["spec"]["template"]["spec"]["containers"][0]
        env = container_env(container, config_maps)
        keys = Keys(env.get("DARKROOM_KEY_PREFIX") or Keys().prefix)
        triggers = scaled["spec"]["triggers"]
        streams = {t["metadata"].get("stream") for t in triggers}
        role = _role(container)
        if role == "worker":
            catalog = load_catalog(target, config_maps, problems)
            if catalog is None:
                continue
            all_routes |= set(catalog.routes)
            routes = [r.strip() for r in (env.get("DARKROOM_ROUTES") or "").split(",") if r.strip()]
            unknown = set(routes) - set(catalog.routes)
            if unknown:
                problems.add(where(target), f"DARKROOM_ROUTES names unknown routes {unknown}")
            served = set(routes) or set(catalog.routes)
            routes_served |= served
            # Workers scale on each served route's backlog: its jobs waiting and in flight.
            expected = {keys.backlog(route) for route in served}
            batches = {
                keys.backlog(r): catalog.routes[r].gpu.max_batch
                for r in served
                if r in catalog.routes
            }
            check_batches(scaled, batches, problems)
        elif role == "uploader":
            expected = {keys.rendered}
        elif role == "notifier":
            expected = {keys.webhook_events}
        else:
            problems.add(where(scaled), f"scales a {role!r} Deployment; expected a consumer")
            continue
        if streams != expected:
            problems.add(
                where(scaled),
                f"triggers on {sorted(map(str, streams))} but {target['metadata']['name']} "
                f"consumes {sorted(expected)}",
            )
        for trigger in triggers:
            address = trigger["metadata"].get("address", "")
            if "NAMESPACE" in address:
                problems.add(where(scaled), f"address {address!r} still has its placeholder")
        modifiers = scaled["spec"].get("advanced", {}).get("scalingModifiers")
        if modifiers is not None:
            named = {t.get("name") for t in triggers}
            used = set(FORMULA_NAME.findall(modifiers["formula"]))
            if used != named:
                problems.add(
                    where(scaled),
                    f"formula {modifiers['formula']!r} uses {sorted(used)}, triggers are "
                    f"{sorted(map(str, named))}",
                )
    scaled_targets = [s["spec"]["scaleTargetRef"]["name"] for s in scaled_objects]
    for name, deployment in deployments.items():
        role = _role(deployment["spec"]["template"]["spec"]["containers"][0])
        if role in CONSUMERS and scaled_targets.count(name) != 1:
            problems.add(where(deployment), "a consumer needs exactly one ScaledObject")
    if all_routes - routes_served:
        problems.add("workers", f"no worker Deployment serves {sorted(all_routes - routes_served)}")


def check_batches(scaled: Doc, batches: dict[str, int], problems: Problems) -> None:
    """The formula divides each route's stream by its max_batch: the target is one full batch
    per worker, not one job (an SD worker renders 8 at once)."""
    modifiers = scaled["spec"].get("advanced", {}).get("scalingModifiers")
    if modifiers is None:
        return
    streams = {t.get("name"): t["metadata"].get("stream") for t in scaled["spec"]["triggers"]}
    for term in modifiers["formula"].split("+"):
        match = FORMULA_TERM.fullmatch(term)
        if match is None:
            problems.add(
                where(scaled),
                f"formula term {term.strip()!r}: expected <trigger> or <trigger> / <max_batch>",
            )
            continue
        name, divisor = match.group(1), int(match.group(2) or 1)
        batch = batches.get(str(streams.get(name)))
        if batch is not None and divisor != batch:
            problems.add(
                where(scaled),
                f"formula divides {name} by {divisor}; its route's max_batch is {batch}",
            )


def problems_of(docs: list[Doc], release: bool) -> list[str]:
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    scaled_objects = [d for d in docs if d["kind"] == "ScaledObject"]
    problems = Problems()
    check_pod_specs(workloads, config_maps, problems)
    check_scaling(workloads, scaled_objects, config_maps, problems)
    return [*problems, *check_policy(docs, release)]


def check_build(built: Path, crd_dir: Path, release: bool) -> int:
    docs = [d for d in yaml.safe_load_all(built.read_text()) if d]
    problems = problems_of(docs, release)
    tested = any(d["kind"] == "Job" and d["metadata"]["name"] == "model-prefetch" for d in docs)
    if tested and not problems:
        problems += self_test(docs, lambda broken: problems_of(broken, release))

    crd_dir.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            name = f"{built.stem}-{doc['kind']}-{doc['metadata']['name']}.json"
            (crd_dir / name).write_text(json.dumps(doc, indent=2))

    for problem in problems:
        print(f"error: {built.name}: {problem}")
    workloads = sum(d["kind"] in WORKLOADS for d in docs)
    print(
        f"{built.name}: {len(docs)} objects, {workloads} workloads, "
        f"policy {'and its self-test ' if tested else ''}checked, {len(problems)} problems"
    )
    return len(problems)


def main(args: list[str]) -> int:
    release = "--release" in args
    crd_dir, *builds = [arg for arg in args if arg != "--release"]
    failed = sum(check_build(Path(built), Path(crd_dir), release) for built in builds)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
