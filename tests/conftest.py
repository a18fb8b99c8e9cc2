"""Session-wide real parts: a redis-server, an S3-compatible server, tiny checkpoints, and
Darkroom stacks running as subprocesses through the ``darkroom`` CLI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from common.catalog import demo_catalog, write_catalog
from common.redis_server import RedisServer, free_port
from tests.support.ledger import Ledger
from tests.support.s3_server import S3Server, s3_server  # noqa: F401
from tests.support.stack import Stack, stack_env


@contextlib.contextmanager
def redis_of_its_own(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, appendonly: bool = False
) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, killed afterwards: the session's shared one, or
    one for a module whose tests fill it, crash it or measure its memory."""
    server = RedisServer(tmp_path_factory.mktemp(name), appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_of_its_own(tmp_path_factory, "redis") as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpu_worker.tiny import make_all

    root = tmp_path_factory.mktemp("models")
    make_all(root)
    return root


@pytest.fixture(scope="session")
def models_file(tiny_models: Path) -> Path:
    path = tiny_models / "models.toml"
    write_catalog(demo_catalog(tiny_models), path)
    return path


def _stack(
    name: str,
    services: tuple[str, ...],
    redis_server: RedisServer,
    models_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
    extra: dict[str, str] | None = None,
) -> Stack:
    workdir = tmp_path_factory.mktemp(name)
    port = free_port()
    env = stack_env(
        redis_url=redis_server.url,
        prefix=f"{name}:",
        models_file=models_file,
        workdir=workdir,
        port=port,
        extra=extra,
    )
    stack = Stack(name=name, workdir=workdir, env=env, port=port)
    stack.start(*services)
    return stack


@pytest.fixture(scope="session")
def local_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Gateway, worker and uploader with local-directory storage."""
    stack = _stack(
        "local", ("worker", "uploader", "gateway"), redis_server, models_file, tmp_path_factory
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="session")
def s3_stack(
    redis_server: RedisServer,
    models_file: Path,
    s3_server: S3Server,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Gateway, worker (loading models lazily) and uploader storing results in S3 with presigned
    URLs."""
    stack = _stack(
        "s3",
        ("worker", "uploader", "gateway"),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={
            **s3_server.storage_env("darkroom-e2e"),
            "DARKROOM_S3_PRESIGN": "true",
            # Load on first use, so the first job's feed shows the wait.
            "DARKROOM_PRELOAD": "false",
        },
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="session")
def status_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The status service alone, no worker: tests drive job events themselves."""
    stack = _stack(
        "status",
        ("status",),
        redis_server,
        models_file,
        tmp_path_factory,
        extra={"DARKROOM_SSE_PING_S": "0.3"},
    )
    yield stack
    stack.stop_all()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """What a fault or bad-input test injected and what became of its jobs (see the report)."""
    book = Ledger(test=request.node.nodeid)
    yield book
    book.write()
