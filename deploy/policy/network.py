"""The network policy: /metrics open to monitoring and scraped, egress to anywhere without the
private ranges (for the notifier's webhooks, without loopback and CGNAT either), and what an egress
rule to the API server alone looks like."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from manifests import (
    Build,
    Doc,
    policies_for,
    role,
    rule_allows_port,
    selects,
    template_labels,
    where,
)

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


def check_network(build: Build) -> Iterator[str]:
    """/metrics reachable from monitoring; egress to anywhere leaves out private ranges."""
    monitors = build.of("PodMonitor")
    for doc, pod in build.pods():
        if any(role(c) == "notifier" for c in pod["containers"]):
            yield from _notifier_egress(build, doc)
        for container in pod["containers"]:
            env = build.env(container)
            # Workers, uploader, notifier: the probe port; gateway, status: the metrics port.
            port = env.get("DARKROOM_HEALTH_PORT") or env.get("DARKROOM_METRICS_PORT")
            if port is None:
                continue
            labels = template_labels(doc)
            admitted = any(
                rule_allows_port(rule, int(port))
                and any("namespaceSelector" in peer for peer in rule.get("from", []))
                for policy in policies_for(build, labels, "Ingress")
                for rule in policy["spec"].get("ingress", [])
            )
            if not admitted:
                yield (
                    f"{where(doc)}: no NetworkPolicy admits the monitoring namespace to /metrics "
                    f"on {port}"
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
                yield f"{where(doc)}: no PodMonitor scrapes its /metrics port {port}"
    for policy in build.of("NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            if not rule.get("to") and {p.get("port") for p in rule.get("ports", [])} != {53}:
                yield f"{where(policy)}: egress to any address on a port other than DNS"
            for peer in rule.get("to", []):
                block = peer.get("ipBlock", {})
                private = {"0.0.0.0/0": PRIVATE_V4, "::/0": PRIVATE_V6}.get(block.get("cidr"))
                if private and not private <= set(block.get("except", [])):
                    yield (
                        f"{where(policy)}: egress to {block['cidr']} must except {sorted(private)}"
                    )


def _notifier_egress(build: Build, doc: Doc) -> Iterator[str]:
    for policy in policies_for(build, template_labels(doc), "Egress"):
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                block = peer.get("ipBlock", {})
                needed = WEBHOOK_EXCEPT.get(block.get("cidr"), set())
                missing = needed - set(block.get("except", []))
                if missing:
                    yield (
                        f"{where(doc)}: NetworkPolicy/{policy['metadata']['name']} lets webhooks "
                        f"reach {sorted(missing)}: except them from {block['cidr']}"
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
