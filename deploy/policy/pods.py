"""The pod policy: images pulled once per node (and pinned by digest at release), and ephemeral
storage that holds a pod's emptyDirs, its logs and, for the gateway, the uploads in progress."""

from __future__ import annotations

from collections.abc import Iterator

from manifests import Build, all_containers, k8s_bytes, role, where

MULTIPART_OVERHEAD_BYTES = 1024 * 1024
# Container logs count against a pod's ephemeral storage beside its emptyDirs.
LOG_ALLOWANCE_BYTES = 64 * 1024 * 1024


def check_images(build: Build) -> Iterator[str]:
    for doc, pod in build.pods():
        for container in all_containers(pod):
            if container.get("imagePullPolicy") != "IfNotPresent":
                yield (
                    f"{where(doc)}: {container['name']}: imagePullPolicy must be "
                    "IfNotPresent (images pinned by digest at release)"
                )
            if build.release and "@sha256:" not in container["image"]:
                yield (
                    f"{where(doc)}: {container['name']}: {container['image']} is not "
                    "pinned by digest (release)"
                )


def check_ephemeral_storage(build: Build) -> Iterator[str]:
    from gateway.settings import GatewaySettings

    for doc, pod in build.pods():
        for container in all_containers(pod):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                if "ephemeral-storage" not in resources.get(kind, {}):
                    yield f"{where(doc)}: {container['name']}: no ephemeral-storage {kind}"
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
            yield (
                f"{where(doc)}: ephemeral-storage limits ({limit / 2**20:.0f} MiB) below "
                "its emptyDirs' sizeLimits plus logs"
            )
        for container in pod["containers"]:
            if role(container) != "gateway" or "tmp" not in dirs:
                continue
            upload = int(
                build.env(container).get("DARKROOM_MAX_UPLOAD_BYTES")
                or GatewaySettings.model_fields["max_upload_bytes"].default
            )
            # The gateway refuses uploads past this many at once (parts over 1 MiB spill to
            # /tmp), so /tmp must hold that many of the largest.
            uploads = int(
                build.env(container).get("DARKROOM_MAX_CONCURRENT_UPLOADS")
                or GatewaySettings.model_fields["max_concurrent_uploads"].default
            )
            needed = uploads * (upload + MULTIPART_OVERHEAD_BYTES)
            if dirs["tmp"] < needed:
                yield (
                    f"{where(doc)}: /tmp holds {dirs['tmp'] / 2**20:.0f} MiB, less than "
                    f"{uploads} uploads in progress (DARKROOM_MAX_CONCURRENT_UPLOADS) "
                    f"({needed / 2**20:.0f} MiB)"
                )
