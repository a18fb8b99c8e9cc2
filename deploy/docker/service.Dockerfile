# syntax=docker/dockerfile:1
# The gateway, status, uploader and notifier image: the project and its runtime dependencies
# exactly as uv.lock pins them, without the "worker" dependency group (no torch, diffusers, …).
# The build context is the repository root:
#   docker build -f deploy/docker/service.Dockerfile -t darkroom-service .
# service.Dockerfile.dockerignore, beside this file, keeps .venv, .git and the tests out of it.
# Run as `darkroom gateway` (the default), `darkroom status`, `darkroom uploader` or
# `darkroom notifier`.

# uv as the lock was written with; both Python stages on the same base, so the virtual
# environment's interpreter path (/usr/local/bin/python3.11) holds in the final image.
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM python:3.11-slim AS build
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled now, because the running container's filesystem is read-only.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/darkroom
WORKDIR /src
# Dependencies first: this layer is reused until uv.lock or pyproject.toml change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-default-groups --no-install-project
COPY pyproject.toml uv.lock README.md ./
# gpu_worker too: the CLI reads every service's settings class (none of them imports torch).
COPY common ./common
COPY gateway ./gateway
COPY gpu_worker ./gpu_worker
COPY notifier ./notifier
COPY uploader ./uploader
# The project as a wheel, not editable, so /src stays behind in this stage.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups --no-editable

FROM python:3.11-slim
# Kubernetes ignores HEALTHCHECK; the manifests probe each role on its own port and path.
# checkov:skip=CKV_DOCKER_2: health is checked by the Kubernetes probes, per role
RUN groupadd --system --gid 10001 darkroom \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin darkroom
COPY --from=build /opt/darkroom /opt/darkroom
ENV PATH=/opt/darkroom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8081
ENTRYPOINT ["darkroom"]
CMD ["gateway"]
