"""Production policy over a built overlay: what a first rollout on a managed cluster needs.

Imported by deploy/check_manifests.py, which runs ``check_policy`` on every build and the
self-test (deploy/policy_self_test.py) on the gpu builds. Reading the overlay is
deploy/manifests.py's.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

from manifests import (
    GPU_MEMORY_LABEL,
    SERVICE_ACCOUNT_DIR,
    Build,
    Doc,
    all_containers,
    cpu_millis,
    gpu_memory_range,
    k8s_bytes,
    kube_api_mounted,
    policies_for,
    redis_bytes,
    role,
    rule_allows_port,
    selects,
    template_labels,
    token_mounted,
    where,
)

REPO = Path(__file__).resolve().parents[1]

# The NVIDIA driver each CUDA major version needs (CUDA's minor version compatibility: any
# 12.x runs on driver 525+, any 13.x on 580+). GPU Feature Discovery labels the node with the
# driver's major version.
MIN_DRIVER_BY_CUDA = {12: 525, 13: 580}
DRIVER_LABEL = "nvidia.com/cuda.driver-version.major"
GPU_RESOURCE = "nvidia.com/gpu"
# maxmemory at most this share of Redis's memory limit: the rest is for the AOF rewrite child's
# copy-on-write pages, allocator fragmentation and client buffers.
MAX_REDIS_MEMORY_RATIO = 0.6
# Input images waiting in Redis may take at most this share of maxmemory (the rest: queued
# records, rendered outputs on their way to storage, finished records for TASK_TTL).
MAX_INPUT_SHARE = 0.5
DEFAULT_MAX_WAITING_INPUT_BYTES = 512 * 1024 * 1024
MULTIPART_OVERHEAD_BYTES = 1024 * 1024
# Container logs count against a pod's ephemeral storage beside its emptyDirs.
LOG_ALLOWANCE_BYTES = 64 * 1024 * 1024
# Hub repositories that need a token of an account that accepted their licence.
GATED_HUB_IDS = {"black-forest-labs/FLUX.1-dev"}
# Egress to "anywhere" leaves out the private and link-local ranges (nodes, pods, services,
# cloud metadata): an ipBlock of 0.0.0.0/0 must except at least these.
PRIVATE_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
PRIVATE_V6 = {"fc00::/7", "fe80::/10"}
# Webhook URLs are the tenants' to choose: the notifier's way out also leaves out shared (CGNAT,
# some clusters' pod range) and loopback addresses, as its own SSRF guard does.
WEBHOOK_EXCEPT = {
    "0.0.0.0/0": PRIVATE_V4 | {"100.64.0.0/10", "127.0.0.0/8"},
    "::/0": PRIVATE_V6 | {"::1/128"},
}
# Workers reach the API server (their pods' deletion cost) and nothing else outside the
# cluster: an ipBlock no wider than this, on the API server's ports only.
KUBE_API_PORTS = {443, 6443}
MAX_KUBE_API_PREFIX = {4: 16, 6: 48}
FALSE_WORDS = {"false", "0", "no", "off"}


class Policy:
    """Collects the problems of one build."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.problems: list[str] = []

    def add(self, where_: str, message: str) -> None:
        self.problems.append(f"{where_}: {message}")

    # Redis -------------------------------------------------------------------------------

    def redis(self) -> None:
        """AOF only, maxmemory within its share of a Guaranteed pod, shutdown inside its grace."""
        redis = self.build.named("StatefulSet", "redis")
        if redis is None:
            return  # a managed Redis (REDIS_URL): its memory is the provider's
        pod = redis["spec"]["template"]["spec"]
        conf = self._redis_conf(pod)
        lines = [line.split("#")[0].strip() for line in conf.splitlines()]
        directives = [shlex.split(line) for line in lines if line]
        saves = [d[1:] for d in directives if d[0] == "save"]
        if saves != [[""]]:
            self.add(where(redis), f'redis.conf must say save "" (AOF only), not {saves}')
        if ["appendonly", "yes"] not in directives:
            self.add(where(redis), "redis.conf must say appendonly yes")
        if ["maxmemory-policy", "noeviction"] not in directives:
            self.add(where(redis), "redis.conf must say maxmemory-policy noeviction")
        timeouts = [float(d[1]) for d in directives if d[0] == "shutdown-timeout"]
        shutdown_s = timeouts[-1] if timeouts else 10.0
        grace_s = pod.get("terminationGracePeriodSeconds", 30)
        if grace_s < shutdown_s + 20:
            self.add(
                where(redis),
                f"terminationGracePeriodSeconds {grace_s} is not well past "
                f"shutdown-timeout {shutdown_s:g} s (20 s margin)",
            )
        container = pod["containers"][0]
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for resource, parse in (("cpu", cpu_millis), ("memory", k8s_bytes)):
            if resource not in limits or parse(requests.get(resource, "0")) != parse(
                limits[resource]
            ):
                self.add(where(redis), f"{resource} requests must equal limits (Guaranteed QoS)")
        maxmemory = self.build.env(container).get("REDIS_MAXMEMORY")
        if not maxmemory or "memory" not in limits:
            self.add(where(redis), "needs REDIS_MAXMEMORY and a memory limit")
            return
        ratio = redis_bytes(maxmemory) / k8s_bytes(limits["memory"])
        if ratio > MAX_REDIS_MEMORY_RATIO:
            self.add(
                where(redis),
                f"maxmemory {maxmemory} is {ratio:.0%} of the memory limit "
                f"{limits['memory']}; at most {MAX_REDIS_MEMORY_RATIO:.0%}",
            )
        self._priority(redis, pod)
        self._waiting_inputs(redis_bytes(maxmemory))

    def _redis_conf(self, pod: Doc) -> str:
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                data = self.build.config_maps[volume["configMap"]["name"]].get("data", {})
                if "redis.conf" in data:
                    return str(data["redis.conf"])
        return ""

    def _priority(self, redis: Doc, pod: Doc) -> None:
        name = pod.get("priorityClassName")
        if not name or self.build.named("PriorityClass", name) is None:
            self.add(where(redis), "needs a PriorityClass of this build (priorityClassName)")

    def _waiting_inputs(self, maxmemory_bytes: float) -> None:
        """The gateway's cap on input images, in Redis bytes, within its share of maxmemory."""
        measured = json.loads((REPO / "bench/results/redis_memory.json").read_text())["queued"]
        redis_per_byte = measured["bytes_per_queued_i2i_job"] / measured["input_image_bytes"]
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                if role(container) != "gateway":
                    continue
                env = self.build.env(container)
                cap = int(
                    env.get("DARKROOM_MAX_WAITING_INPUT_BYTES") or DEFAULT_MAX_WAITING_INPUT_BYTES
                )
                held = cap * redis_per_byte
                if held > maxmemory_bytes * MAX_INPUT_SHARE:
                    self.add(
                        where(doc),
                        f"DARKROOM_MAX_WAITING_INPUT_BYTES {cap} holds about "
                        f"{held / 2**20:.0f} MiB of Redis, over "
                        f"{MAX_INPUT_SHARE:.0%} of maxmemory",
                    )

    # GPUs --------------------------------------------------------------------------------

    def gpu_nodes(self) -> None:
        """Workers only on drivers that run uv.lock's CUDA, pools on disjoint GPU sizes."""
        cuda = lockfile_cuda_major()
        ranges: list[tuple[float, float, str]] = []
        for doc, pod in self.build.pods():
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
                self.add(where(doc), "requests a GPU without required node affinity")
                continue
            for term in terms:
                expressions = term.get("matchExpressions", [])
                if cuda is not None:
                    self._driver(doc, expressions, cuda)
                low, high = gpu_memory_range(expressions)
                if low == 0:
                    self.add(where(doc), f"node term without a {GPU_MEMORY_LABEL} lower bound")
                ranges.append((low, high, doc["metadata"]["name"]))
        ranges.sort()
        for (low_a, high_a, a), (low_b, high_b, b) in zip(ranges, ranges[1:], strict=False):
            if a != b and low_b < high_a:
                self.add(
                    f"{a}, {b}",
                    f"GPU memory ranges overlap ({low_a:g}-{high_a:g} and "
                    f"{low_b:g}-{high_b:g} MiB): a pool takes the nodes "
                    "only the other fits on",
                )

    def _driver(self, doc: Doc, expressions: list[Doc], cuda: int) -> None:
        needed = MIN_DRIVER_BY_CUDA.get(cuda)
        if needed is None:
            self.add(
                where(doc),
                f"uv.lock's torch is built for CUDA {cuda}: add its minimum "
                "driver to MIN_DRIVER_BY_CUDA",
            )
            return
        found = [e for e in expressions if e["key"] == DRIVER_LABEL]
        wanted = {"key": DRIVER_LABEL, "operator": "Gt", "values": [str(needed - 1)]}
        if found != [wanted]:
            self.add(
                where(doc),
                f"uv.lock's torch needs CUDA {cuda}, driver {needed}+: every "
                f"node term needs {DRIVER_LABEL} Gt {needed - 1}, has {found}",
            )

    # Storage, models -----------------------------------------------------------------------

    def storage(self) -> None:
        """A shared claim names its class; workers read weights offline from a prefetched cache."""
        for claim in self.build.of("PersistentVolumeClaim"):
            if "ReadWriteMany" in claim["spec"].get("accessModes", []) and not claim["spec"].get(
                "storageClassName"
            ):
                self.add(
                    where(claim),
                    "ReadWriteMany needs a storageClassName (set "
                    "MODEL_CACHE_STORAGE_CLASS in site.env): the clouds' "
                    "default classes are ReadWriteOnce",
                )
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                if role(container) != "worker":
                    continue
                if self.build.env(container).get("HF_HUB_OFFLINE") != "1":
                    self.add(where(doc), "workers must run with HF_HUB_OFFLINE=1")
                self._worker_egress(doc)
                self._render_limits(doc, container)
            claims = {
                v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            if (
                doc["kind"] == "Deployment"
                and claims
                and any(role(c) == "worker" for c in pod["containers"])
            ):
                self._prefetch(doc, claims)

    def _worker_egress(self, doc: Doc) -> None:
        for policy in policies_for(self.build, template_labels(doc), "Egress"):
            for rule in policy["spec"].get("egress", []):
                ports = {p.get("port") for p in rule.get("ports", [])}
                to_pods_only = bool(rule.get("to")) and all(
                    set(peer) == {"podSelector"} for peer in rule["to"]
                )
                if not to_pods_only and ports != {53} and not kube_api_rule(rule):
                    self.add(
                        where(doc),
                        f"NetworkPolicy/{policy['metadata']['name']} lets "
                        "workers out of the cluster: weights come from the "
                        "prefetched cache, and only the API server "
                        f"(an ipBlock of /{MAX_KUBE_API_PREFIX[4]} at most, "
                        f"ports {sorted(KUBE_API_PORTS)}) may be reached",
                    )

    def _render_limits(self, doc: Doc, container: Doc) -> None:
        """A drain (SIGTERM) never cuts short a render its route allows: the pool's drain grace
        covers the max_render_s of every route it serves."""
        catalog = self._catalog(doc)
        if catalog is None:
            return
        env = self.build.env(container)
        served = [r for r in (env.get("DARKROOM_ROUTES") or "").split(",") if r.strip()]
        grace_s = float(env.get("DARKROOM_DRAIN_GRACE_S") or 60)
        for name, route in catalog.routes.items():
            if served and name not in served:
                continue
            if route.max_render_s is not None and route.max_render_s > grace_s:
                self.add(
                    where(doc),
                    f"route {name}: max_render_s {route.max_render_s:g} is past the drain "
                    f"grace of {grace_s:g} s (DARKROOM_DRAIN_GRACE_S)",
                )

    def _prefetch(self, worker: Doc, claims: set[str]) -> None:
        jobs = [
            (job, pod)
            for job, pod in self.build.pods()
            if job["kind"] == "Job"
            and claims
            & {
                v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
        ]
        if not jobs:
            self.add(where(worker), f"no Job fills its model cache {sorted(claims)}")
            return
        catalog = self._catalog(worker)
        gated = {r.weights for r in catalog.routes.values()} & GATED_HUB_IDS if catalog else set()
        for job, pod in jobs:
            if not any(
                rule_allows_port(rule, 443)
                for policy in policies_for(self.build, template_labels(job), "Egress")
                for rule in policy["spec"].get("egress", [])
            ):
                self.add(where(job), "no NetworkPolicy lets it reach the hub (443)")
            if gated and not token_mounted(pod, self.build.env(pod["containers"][0])):
                self.add(
                    where(job),
                    f"{sorted(gated)} are gated: mount HF_TOKEN from a "
                    "Secret that is not optional and set HF_TOKEN_PATH to it",
                )

    def _catalog(self, worker: Doc) -> Any:
        from common.catalog import Catalog  # the project's own model, as the workers parse it

        pod = worker["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                data = self.build.config_maps[volume["configMap"]["name"]].get("data", {})
                if "models.toml" in data:
                    return Catalog.model_validate(tomllib.loads(data["models.toml"]))
        return None

    # Disruption, identity, network ---------------------------------------------------------

    def disruption(self) -> None:
        for budget in self.build.of("PodDisruptionBudget"):
            if budget["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
                self.add(
                    where(budget),
                    "needs unhealthyPodEvictionPolicy: AlwaysAllow, or an "
                    "unready pod (Redis down) blocks every drain",
                )

    def identity(self) -> None:
        accounts = {a["metadata"]["name"] for a in self.build.of("ServiceAccount")}
        users: dict[str, list[str]] = {}
        for doc, pod in self.build.pods():
            name = pod.get("serviceAccountName", "default")
            users.setdefault(name, []).append(doc["metadata"]["name"])
            if name == "default" or name not in accounts:
                self.add(where(doc), f"needs its own ServiceAccount of this build, not {name!r}")
            if pod.get("automountServiceAccountToken") is not False:
                self.add(where(doc), "automountServiceAccountToken must be false")
        for doc, pod in self.build.pods():
            if any(role(c) == "uploader" for c in pod["containers"]):
                name = pod.get("serviceAccountName", "default")
                if users.get(name) != [doc["metadata"]["name"]]:
                    self.add(
                        where(doc),
                        f"ServiceAccount {name} is shared with {users.get(name)}"
                        ": the storage identity is the uploader's alone",
                    )

    def scale_in(self) -> None:
        """Workers mark their pods busy or idle (pod-deletion-cost): they know their pod, hold
        a token and CA, may patch pods and nothing more, and reach the API server."""
        roles = {r["metadata"]["name"]: r for r in self.build.of("Role")}
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                if role(container) != "worker" or doc["kind"] != "Deployment":
                    continue
                env = self.build.env(container)
                if str(env.get("DARKROOM_POD_DELETION_COST", "true")).lower() in FALSE_WORDS:
                    continue
                fields = {
                    v["name"]: v.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                    for v in container.get("env", [])
                }
                for name, path in (
                    ("POD_NAME", "metadata.name"),
                    ("POD_NAMESPACE", "metadata.namespace"),
                ):
                    if fields.get(name) != path:
                        self.add(where(doc), f"pod-deletion-cost: {name} must come from {path}")
                if not kube_api_mounted(pod, container):
                    self.add(
                        where(doc),
                        "pod-deletion-cost: mount a projected ServiceAccount token and "
                        f"kube-root-ca.crt at {SERVICE_ACCOUNT_DIR}",
                    )
                account = pod.get("serviceAccountName", "default")
                granted = [
                    rule
                    for binding in self.build.of("RoleBinding")
                    if binding["roleRef"]["kind"] == "Role"
                    and any(
                        s["kind"] == "ServiceAccount" and s["name"] == account
                        for s in binding.get("subjects", [])
                    )
                    for rule in roles.get(binding["roleRef"]["name"], {}).get("rules", [])
                ]
                if not any(
                    "" in r.get("apiGroups", [])
                    and "pods" in r.get("resources", [])
                    and "patch" in r.get("verbs", [])
                    for r in granted
                ):
                    self.add(
                        where(doc),
                        f"pod-deletion-cost: no Role bound to {account} lets it patch pods",
                    )
                for rule in granted:
                    if (
                        rule.get("apiGroups") != [""]
                        or rule.get("resources") != ["pods"]
                        or not set(rule.get("verbs", [])) <= {"get", "patch"}
                    ):
                        self.add(
                            where(doc),
                            f"ServiceAccount {account} may do more than patch its pod: {rule}",
                        )
                if not any(
                    kube_api_rule(rule)
                    for policy in policies_for(self.build, template_labels(doc), "Egress")
                    for rule in policy["spec"].get("egress", [])
                ):
                    self.add(
                        where(doc),
                        "pod-deletion-cost: no NetworkPolicy lets it reach the API server "
                        "(KUBE_API_CIDR on 443/6443)",
                    )

    def network(self) -> None:
        """/metrics reachable from monitoring; egress to anywhere leaves out private ranges."""
        monitors = self.build.of("PodMonitor")
        for doc, pod in self.build.pods():
            if any(role(c) == "notifier" for c in pod["containers"]):
                self._notifier_egress(doc)
            for container in pod["containers"]:
                env = self.build.env(container)
                # Workers, uploader, notifier: the probe port; gateway, status: the metrics port.
                port = env.get("DARKROOM_HEALTH_PORT") or env.get("DARKROOM_METRICS_PORT")
                if port is None:
                    continue
                labels = template_labels(doc)
                admitted = any(
                    rule_allows_port(rule, int(port))
                    and any("namespaceSelector" in peer for peer in rule.get("from", []))
                    for policy in policies_for(self.build, labels, "Ingress")
                    for rule in policy["spec"].get("ingress", [])
                )
                if not admitted:
                    self.add(
                        where(doc),
                        f"no NetworkPolicy admits the monitoring namespace to /metrics on {port}",
                    )
                names = {
                    p.get("name")
                    for p in container.get("ports", [])
                    if str(p.get("containerPort")) == port
                }
                if monitors and not any(
                    selects(m["spec"]["selector"], labels)
                    and any(e.get("port") in names for e in m["spec"]["podMetricsEndpoints"])
                    for m in monitors
                ):
                    self.add(where(doc), f"no PodMonitor scrapes its /metrics port {port}")
        for policy in self.build.of("NetworkPolicy"):
            for rule in policy["spec"].get("egress", []):
                if not rule.get("to") and {p.get("port") for p in rule.get("ports", [])} != {53}:
                    self.add(where(policy), "egress to any address on a port other than DNS")
                for peer in rule.get("to", []):
                    block = peer.get("ipBlock", {})
                    private = {"0.0.0.0/0": PRIVATE_V4, "::/0": PRIVATE_V6}.get(block.get("cidr"))
                    if private and not private <= set(block.get("except", [])):
                        self.add(
                            where(policy),
                            f"egress to {block['cidr']} must except {sorted(private)}",
                        )

    def _notifier_egress(self, doc: Doc) -> None:
        for policy in policies_for(self.build, template_labels(doc), "Egress"):
            for rule in policy["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    block = peer.get("ipBlock", {})
                    needed = WEBHOOK_EXCEPT.get(block.get("cidr"), set())
                    missing = needed - set(block.get("except", []))
                    if missing:
                        self.add(
                            where(doc),
                            f"NetworkPolicy/{policy['metadata']['name']} lets webhooks reach "
                            f"{sorted(missing)}: except them from {block['cidr']}",
                        )

    # Images, storage of the pods, results -----------------------------------------------------

    def images(self) -> None:
        for doc, pod in self.build.pods():
            for container in all_containers(pod):
                if container.get("imagePullPolicy") != "IfNotPresent":
                    self.add(
                        where(doc),
                        f"{container['name']}: imagePullPolicy must be "
                        "IfNotPresent (images pinned by digest at release)",
                    )
                if self.build.release and "@sha256:" not in container["image"]:
                    self.add(
                        where(doc),
                        f"{container['name']}: {container['image']} is not "
                        "pinned by digest (release)",
                    )

    def ephemeral(self) -> None:
        from gateway.settings import GatewaySettings

        for doc, pod in self.build.pods():
            for container in all_containers(pod):
                resources = container.get("resources", {})
                for kind in ("requests", "limits"):
                    if "ephemeral-storage" not in resources.get(kind, {}):
                        self.add(where(doc), f"{container['name']}: no ephemeral-storage {kind}")
            dirs = {
                v["name"]: k8s_bytes(v["emptyDir"].get("sizeLimit", 0))
                for v in pod.get("volumes", [])
                if v.get("emptyDir") is not None and v["emptyDir"].get("medium") != "Memory"
            }
            limit = sum(
                k8s_bytes(c.get("resources", {}).get("limits", {}).get("ephemeral-storage", 0))
                for c in pod["containers"]
            )
            if sum(dirs.values()) + LOG_ALLOWANCE_BYTES > limit:
                self.add(
                    where(doc),
                    f"ephemeral-storage limits ({limit / 2**20:.0f} MiB) below "
                    "its emptyDirs' sizeLimits plus logs",
                )
            for container in pod["containers"]:
                if role(container) != "gateway" or "tmp" not in dirs:
                    continue
                upload = int(
                    self.build.env(container).get("DARKROOM_MAX_UPLOAD_BYTES")
                    or GatewaySettings.model_fields["max_upload_bytes"].default
                )
                # The gateway refuses uploads past this many at once (parts over 1 MiB spill to
                # /tmp), so /tmp must hold that many of the largest.
                uploads = int(
                    self.build.env(container).get("DARKROOM_MAX_CONCURRENT_UPLOADS")
                    or GatewaySettings.model_fields["max_concurrent_uploads"].default
                )
                needed = uploads * (upload + MULTIPART_OVERHEAD_BYTES)
                if dirs["tmp"] < needed:
                    self.add(
                        where(doc),
                        f"/tmp holds {dirs['tmp'] / 2**20:.0f} MiB, less than "
                        f"{uploads} uploads in progress (DARKROOM_MAX_CONCURRENT_UPLOADS) "
                        f"({needed / 2**20:.0f} MiB)",
                    )

    def results(self) -> None:
        """S3 results: an explicit bucket, and URLs a private bucket answers."""
        from uploader.settings import UploaderSettings

        default_bucket = UploaderSettings.model_fields["s3_bucket_name"].default
        for doc, pod in self.build.pods():
            for container in pod["containers"]:
                env = self.build.env(container)
                if role(container) != "uploader" or env.get("DARKROOM_STORAGE") != "s3":
                    continue
                if env.get("S3_BUCKET_NAME") in (None, "", default_bucket):
                    self.add(
                        where(doc),
                        f"S3_BUCKET_NAME must be set by the overlay (not {default_bucket!r})",
                    )
                presign = str(env.get("DARKROOM_S3_PRESIGN", "")).lower() in {"1", "true", "yes"}
                if not presign and not env.get("DARKROOM_S3_PUBLIC_BASE_URL"):
                    self.add(
                        where(doc),
                        "result URLs would be unsigned: set DARKROOM_S3_PRESIGN"
                        "=true or DARKROOM_S3_PUBLIC_BASE_URL",
                    )

    def routes(self) -> None:
        """Gateway API: the SSE routes have no request timeout."""
        for route in self.build.of("HTTPRoute"):
            for rule in route["spec"]["rules"]:
                names = {ref["name"] for ref in rule.get("backendRefs", [])}
                timeout = rule.get("timeouts", {}).get("request")
                if names & {"status", "gateway"} and timeout != "0s":
                    self.add(
                        where(route),
                        f"the rule to {sorted(names)} serves SSE feeds: "
                        'timeouts.request must be "0s"',
                    )


def kube_api_rule(rule: Doc) -> bool:
    """An egress rule to the API server alone: narrow ipBlocks, its ports only."""
    ports = {p.get("port") for p in rule.get("ports", [])}
    peers = rule.get("to", [])
    if not peers or not ports or not ports <= KUBE_API_PORTS:
        return False
    for peer in peers:
        if set(peer) != {"ipBlock"} or "except" in peer["ipBlock"]:
            return False
        try:
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=False)
        except ValueError:
            return False
        if network.prefixlen < MAX_KUBE_API_PREFIX[network.version]:
            return False
    return True


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


def check_policy(docs: list[Doc], release: bool = False) -> list[str]:
    policy = Policy(Build(docs, release))
    for check in (
        policy.redis,
        policy.gpu_nodes,
        policy.storage,
        policy.disruption,
        policy.identity,
        policy.scale_in,
        policy.network,
        policy.images,
        policy.ephemeral,
        policy.results,
        policy.routes,
    ):
        check()
    return list(dict.fromkeys(policy.problems))  # once each, though several pools share a cause
