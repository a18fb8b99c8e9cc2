"""The serving policy: result URLs a client can fetch from a private bucket, and SSE feeds that a
Gateway API route does not cut off."""

from __future__ import annotations

from collections.abc import Iterator

from manifests import Build, role, where


def check_results(build: Build) -> Iterator[str]:
    """S3 results: an explicit bucket, and URLs a private bucket answers."""
    from uploader.settings import UploaderSettings

    default_bucket = UploaderSettings.model_fields["s3_bucket_name"].default
    for doc, pod in build.pods():
        for container in pod["containers"]:
            env = build.env(container)
            if role(container) != "uploader" or env.get("DARKROOM_STORAGE") != "s3":
                continue
            if env.get("S3_BUCKET_NAME") in (None, "", default_bucket):
                yield (
                    f"{where(doc)}: S3_BUCKET_NAME must be set by the overlay "
                    f"(not {default_bucket!r})"
                )
            presign = str(env.get("DARKROOM_S3_PRESIGN", "")).lower() in {"1", "true", "yes"}
            if not presign and not env.get("DARKROOM_S3_PUBLIC_BASE_URL"):
                yield (
                    f"{where(doc)}: result URLs would be unsigned: set DARKROOM_S3_PRESIGN"
                    "=true or DARKROOM_S3_PUBLIC_BASE_URL"
                )


def check_routes(build: Build) -> Iterator[str]:
    """Gateway API: the SSE routes have no request timeout."""
    for route in build.of("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            names = {ref["name"] for ref in rule.get("backendRefs", [])}
            timeout = rule.get("timeouts", {}).get("request")
            if names & {"status", "gateway"} and timeout != "0s":
                yield (
                    f"{where(route)}: the rule to {sorted(names)} serves SSE feeds: "
                    'timeouts.request must be "0s"'
                )
