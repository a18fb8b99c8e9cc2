"""The access policy: disruption budgets that let a drain through, a ServiceAccount per workload
(the uploader's alone), and the workers' narrow right to mark their pods for scale-in."""

from __future__ import annotations

from collections.abc import Iterator

from manifests import (
    SERVICE_ACCOUNT_DIR,
    Build,
    kube_api_mounted,
    policies_for,
    role,
    template_labels,
    where,
)

from policy.network import kube_api_rule

FALSE_WORDS = {"false", "0", "no", "off"}


def check_disruption(build: Build) -> Iterator[str]:
    for budget in build.of("PodDisruptionBudget"):
        if budget["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            yield (
                f"{where(budget)}: needs unhealthyPodEvictionPolicy: AlwaysAllow, or an "
                "unready pod (Redis down) blocks every drain"
            )


def check_identity(build: Build) -> Iterator[str]:
    accounts = {a["metadata"]["name"] for a in build.of("ServiceAccount")}
    users: dict[str, list[str]] = {}
    for doc, pod in build.pods():
        name = pod.get("serviceAccountName", "default")
        users.setdefault(name, []).append(doc["metadata"]["name"])
        if name == "default" or name not in accounts:
            yield f"{where(doc)}: needs its own ServiceAccount of this build, not {name!r}"
        if pod.get("automountServiceAccountToken") is not False:
            yield f"{where(doc)}: automountServiceAccountToken must be false"
    for doc, pod in build.pods():
        if any(role(c) == "uploader" for c in pod["containers"]):
            name = pod.get("serviceAccountName", "default")
            if users.get(name) != [doc["metadata"]["name"]]:
                yield (
                    f"{where(doc)}: ServiceAccount {name} is shared with {users.get(name)}"
                    ": the storage identity is the uploader's alone"
                )


def check_scale_in(build: Build) -> Iterator[str]:
    """Workers mark their pods busy or idle (pod-deletion-cost): they know their pod, hold
    a token and CA, may patch pods and nothing more, and reach the API server."""
    roles = {r["metadata"]["name"]: r for r in build.of("Role")}
    for doc, pod in build.pods():
        for container in pod["containers"]:
            if role(container) != "worker" or doc["kind"] != "Deployment":
                continue
            env = build.env(container)
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
                    yield f"{where(doc)}: pod-deletion-cost: {name} must come from {path}"
            if not kube_api_mounted(pod, container):
                yield (
                    f"{where(doc)}: pod-deletion-cost: mount a projected ServiceAccount token "
                    f"and kube-root-ca.crt at {SERVICE_ACCOUNT_DIR}"
                )
            account = pod.get("serviceAccountName", "default")
            granted = [
                rule
                for binding in build.of("RoleBinding")
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
                yield (
                    f"{where(doc)}: pod-deletion-cost: no Role bound to {account} "
                    "lets it patch pods"
                )
            for rule in granted:
                if (
                    rule.get("apiGroups") != [""]
                    or rule.get("resources") != ["pods"]
                    or not set(rule.get("verbs", [])) <= {"get", "patch"}
                ):
                    yield (
                        f"{where(doc)}: ServiceAccount {account} may do more than patch its pod: "
                        f"{rule}"
                    )
            if not any(
                kube_api_rule(rule)
                for policy in policies_for(build, template_labels(doc), "Egress")
                for rule in policy["spec"].get("egress", [])
            ):
                yield (
                    f"{where(doc)}: pod-deletion-cost: no NetworkPolicy lets it reach the API "
                    "server (KUBE_API_CIDR on 443/6443)"
                )
