"""Production policy over a built overlay: what a first rollout on a managed cluster needs.

Imported by deploy/check_manifests.py, which runs ``check_policy`` on every build and the
self-test (deploy/policy_self_test.py) on the gpu builds. Reading the overlay is
deploy/manifests.py's. Each module here checks one concept and yields its problems, each
``where: message`` (where: the object at fault, ``Kind/name``, or two overlapping GPU pools).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from manifests import Build, Doc

from policy.access import check_disruption, check_identity, check_scale_in
from policy.gpus import DRIVER_LABEL, check_gpu_nodes
from policy.models import check_model_cache
from policy.network import check_network
from policy.pods import check_ephemeral_storage, check_images
from policy.redis import check_redis
from policy.serving import check_results, check_routes

__all__ = ["CHECKS", "DRIVER_LABEL", "check_policy"]

Check = Callable[[Build], Iterable[str]]

# Each check yields its problems; a build's are listed in this order.
CHECKS: tuple[Check, ...] = (
    check_redis,
    check_gpu_nodes,
    check_model_cache,
    check_disruption,
    check_identity,
    check_scale_in,
    check_network,
    check_images,
    check_ephemeral_storage,
    check_results,
    check_routes,
)


def check_policy(docs: list[Doc], release: bool = False) -> list[str]:
    build = Build(docs, release)
    problems = [problem for check in CHECKS for problem in check(build)]
    return list(dict.fromkeys(problems))  # once each, though several pools share a cause
