# syntax=docker/dockerfile:1
# The GPU worker image: the project with the "worker" dependency group (torch, diffusers,
# transformers, accelerate, peft, av, torchvision) exactly as uv.lock pins them.
# The build context is the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t darkroom-worker .
#
# Why python:3.11-slim and not an nvidia/cuda base: torch's Linux wheels from PyPI bring their
# own CUDA runtime, cuDNN, cuBLAS and NCCL as nvidia-* wheels, so a CUDA base image would only
# add a second copy of them. The one thing not in the image is the kernel driver's user-space
# library (libcuda), which the NVIDIA container toolkit mounts into containers that request
# nvidia.com/gpu (device plugin / GPU operator). The same image runs on CPU (the dev overlay).

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
# Dependencies first (several GB): reused until uv.lock or pyproject.toml change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-default-groups --group worker --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY common ./common
COPY gateway ./gateway
COPY gpu_worker ./gpu_worker
COPY notifier ./notifier
COPY uploader ./uploader
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-default-groups --group worker --no-editable

FROM python:3.11-slim
# Kubernetes ignores HEALTHCHECK; the manifests probe /livez and /readyz on port 8081.
# checkov:skip=CKV_DOCKER_2: health is checked by the Kubernetes probes
# Triton compiles its kernel launchers with the system C compiler at run time, which a route
# whose catalogue entry sets gpu.compile needs (Python's headers are in the base image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 darkroom \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin darkroom
COPY --from=build /opt/darkroom /opt/darkroom
# The toolkit injects the driver for compute (CUDA) and nvidia-smi; which GPUs is decided by
# the device plugin, per container.
ENV PATH=/opt/darkroom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["darkroom"]
CMD ["worker"]
