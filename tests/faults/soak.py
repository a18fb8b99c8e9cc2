"""A randomized fault soak: jobs keep arriving while faults strike at random; then every job is
checked for exactly one stored result.

    uv run python -m tests.faults.soak [--duration-s 300] [--seed 7]

Two workers, an uploader and a gateway run as subprocesses on a Redis with an append-only file
and a SeaweedFS S3 server. A client submits a job every few hundred milliseconds, some small,
some long enough to be caught mid-render. Every few seconds one fault strikes, chosen at random:
a worker SIGKILLed or SIGTERMed (and started again), the uploader SIGKILLed (and started again),
S3 down for a while, Redis crashed (SIGKILL; its AOF is fsynced once a second) and started again,
Redis full (``maxmemory``) for a few seconds, Redis demoted to a read-only replica of a standby and
promoted back (a failover and its return).
A submit that meets an outage is retried with the same ``Idempotency-Key``, as a careful client
would, so a retry never makes a second job. When the time is up the faults stop, and every job
must complete with exactly one object in the bucket, except that a Redis crash may take back what
was acknowledged in the last second before it (``CRASH_LOSS_S``), and so may a failover: such jobs
are counted apart as lost by crash; one acknowledged earlier and gone is lost. (S3 AccessDenied is
not in the mix: it fails jobs by design; ``test_storage_faults.py`` covers it.)
``tests/faults/test_soak.py`` runs a short soak in the suite; this command runs a long one.
"""

from __future__ import annotations

import argparse
import random
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from common.catalog import demo_catalog, write_catalog
from common.redis_server import RedisServer, free_port
from tests.support.fleet import UUID_RE, wait_all_terminal
from tests.support.ledger import Ledger
from tests.support.s3_server import S3Server, start_s3_server
from tests.support.stack import Stack, stack_env

BUCKET = "soak"
SMALL = {"prompt": "soak", "width": 64, "height": 64, "num_inference_steps": 2}
# Long enough on the tiny checkpoint for a kill to land mid-render.
LONG = {"prompt": "soak, long", "width": 512, "height": 512, "num_inference_steps": 20}
SUBMIT_RETRY_S = 120.0
# Redis's promise with ``appendfsync everysec``: a crash loses at most the last second of writes.
CRASH_LOSS_S = 1.0


class Soak:
    def __init__(self, root: Path, models_file: Path, s3: S3Server, seed: int) -> None:
        self.rng = random.Random(seed)
        self.root = root
        self.s3 = s3
        root.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(root / "redis", appendonly=True, appendfsync="everysec")
        self.redis.start()
        port = free_port()
        env = stack_env(
            redis_url=self.redis.url,
            prefix="soak:",
            models_file=models_file,
            workdir=root,
            port=port,
            extra={
                **s3.storage_env(BUCKET),
                "DARKROOM_ROUTES": "sd",
                "DARKROOM_CLAIM_IDLE_MS": "2000",
                "DARKROOM_DRAIN_GRACE_S": "3",
                "DARKROOM_TORCH_THREADS": "1",
            },
        )
        self.stack = Stack(name="soak", workdir=root, env=env, port=port)
        self.ledger = Ledger(test="tests/faults/soak.py")
        # When each job's submit was acknowledged (200), and when Redis crashed (monotonic s).
        self.acked_at: dict[str, float] = {}
        self.crashed_at: list[float] = []
        self._stop_submitting = threading.Event()

    @property
    def faults(self) -> dict[str, Callable[[], None]]:
        return {
            "worker SIGKILL (random moment)": lambda: self._restart_worker(signal.SIGKILL),
            "worker SIGTERM (random moment)": lambda: self._restart_worker(signal.SIGTERM),
            "uploader SIGKILL (random moment)": self._restart_uploader,
            "S3 outage (random length)": self._s3_outage,
            "redis SIGKILL (AOF everysec)": self._redis_crash,
            "redis OOM (random length)": self._redis_full,
            "redis failover to a replica and back": self._redis_failover,
        }

    def run(self, duration_s: float) -> Ledger:
        self.stack.start("worker:a", "worker:b", "uploader", "gateway")
        submitter = threading.Thread(target=self._submit_until_stopped, name="soak-submitter")
        submitter.start()
        try:
            deadline = time.monotonic() + duration_s
            kinds: list[str] = []
            while time.monotonic() < deadline:
                time.sleep(self.rng.uniform(2.0, 6.0))
                # Every kind once, in a random order, then again: a short soak sees variety.
                kinds = kinds or self.rng.sample(sorted(self.faults), len(self.faults))
                kind = kinds.pop()
                print(f"soak: {kind}", flush=True)
                self.faults[kind]()
                self.ledger.fault(kind)
        finally:
            self._stop_submitting.set()
            submitter.join()
        self._check()
        return self.ledger

    def close(self) -> None:
        self.stack.stop_all()
        self.redis.stop(kill=True)

    # -- the client ---------------------------------------------------------------------------

    def _submit_until_stopped(self) -> None:
        with httpx.Client(base_url=self.stack.base_url, timeout=30) as client:
            while not self._stop_submitting.is_set():
                body = LONG if self.rng.random() < 0.2 else SMALL
                job_id = self._submit(client, body)
                self.acked_at[job_id] = time.monotonic()
                time.sleep(self.rng.uniform(0.1, 0.5))

    def _submit(self, client: httpx.Client, body: dict[str, object]) -> str:
        """Submit once, retrying through outages with the same key: one job whatever happens."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                answer = client.post("/api/sd/t2i", json=body, headers=headers)
                if answer.status_code == 200:
                    return str(answer.json()["session_id"])
                if answer.status_code >= 500 and answer.status_code != 503:
                    self.ledger.server_errors += 1
                reason = f"{answer.status_code} {answer.text[:200]}"
            except httpx.TransportError as exc:
                reason = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"submit kept failing: {reason}")
            time.sleep(0.2)

    # -- the faults ---------------------------------------------------------------------------

    def _restart_worker(self, sig: signal.Signals) -> None:
        victim = self.rng.choice(sorted(s for s in self.stack.processes if s.startswith("worker")))
        self.stack.stop(victim, sig, timeout_s=60)
        self.stack.start(victim)

    def _restart_uploader(self) -> None:
        self.stack.stop("uploader", signal.SIGKILL)
        self.stack.start("uploader")

    def _s3_outage(self) -> None:
        self.s3.stop()
        time.sleep(self.rng.uniform(1.0, 5.0))
        self.s3.start()

    def _redis_crash(self) -> None:
        self.crashed_at.append(time.monotonic())
        self.redis.stop(kill=True)  # no shutdown: only what the AOF already holds survives
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.redis.start()

    def _redis_full(self) -> None:
        """``maxmemory`` reached: every write is refused with OOM for a while."""
        admin = redis.Redis.from_url(self.redis.url)
        try:
            admin.config_set("maxmemory", 1)
            time.sleep(self.rng.uniform(1.0, 5.0))
            admin.config_set("maxmemory", 0)
        finally:
            admin.close()

    def _redis_failover(self) -> None:
        """A standby takes over and the services' Redis becomes its read-only replica for a
        while (READONLY, UNBLOCKED, LOADING), then leads again. Like a crash, a failover may take
        back the last moment of acknowledged writes (replication is asynchronous)."""
        standby = RedisServer(self.root / f"standby-{len(self.crashed_at)}")
        standby.start()
        old = redis.Redis.from_url(self.redis.url)
        new = redis.Redis.from_url(standby.url)
        try:
            new.replicaof("127.0.0.1", self.redis.port)
            _wait_linked(new)
            self.crashed_at.append(time.monotonic())
            new.replicaof("NO", "ONE")
            old.replicaof("127.0.0.1", standby.port)
            _wait_linked(old)
            time.sleep(self.rng.uniform(1.0, 4.0))
            old.replicaof("NO", "ONE")
        finally:
            old.close()
            new.close()
            standby.stop(kill=True)

    # -- the verdict --------------------------------------------------------------------------

    def _check(self) -> None:
        r = redis.Redis.from_url(self.redis.url, decode_responses=True)
        try:
            # A job a crash took back has no record: it is not waited for.
            records = wait_all_terminal(self.stack, r, self.acked_at, timeout_s=300)
        finally:
            r.close()
        stored = self._stored()
        by_crash = {job_id for job_id, rec in records.items() if rec is None and self._new(job_id)}
        self.ledger.submitted += len(by_crash)
        self.ledger.lost_by_crash += len(by_crash)
        kept = {job_id: rec for job_id, rec in records.items() if job_id not in by_crash}
        statuses = [rec.status.value if rec else "missing" for rec in kept.values()]
        self.ledger.outcome(statuses, [stored[job_id] for job_id in kept])
        self.ledger.duplicated += len(set(stored) - set(records))  # objects of no known job

    def _new(self, job_id: str) -> bool:
        """Acknowledged within ``CRASH_LOSS_S`` before a crash: the AOF may not hold it yet."""
        acked = self.acked_at[job_id]
        return any(0 <= crashed - acked <= CRASH_LOSS_S for crashed in self.crashed_at)

    def _stored(self) -> Counter[str]:
        found: Counter[str] = Counter()
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for page in pages:
            for obj in page.get("Contents", []):
                match = UUID_RE.search(obj["Key"])
                found[match.group(0) if match else obj["Key"]] += 1
        return found


def _wait_linked(replica: redis.Redis, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while replica.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError("the replica did not sync")
        time.sleep(0.05)


def soak(root: Path, models_file: Path, s3: S3Server, *, duration_s: float, seed: int) -> Ledger:
    run = Soak(root, models_file, s3, seed)
    try:
        return run.run(duration_s)
    finally:
        run.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    from gpu_worker.tiny import make_all

    with tempfile.TemporaryDirectory(prefix="darkroom-soak-") as tmp:
        root = Path(tmp)
        make_all(root / "models")
        models_file = root / "models.toml"
        write_catalog(demo_catalog(root / "models"), models_file)
        s3 = start_s3_server(root / "s3")
        try:
            ledger = soak(
                root / "stack", models_file, s3, duration_s=args.duration_s, seed=args.seed
            )
        finally:
            s3.stop()
    print(f"seed {args.seed}, {args.duration_s:.0f} s")
    for kind, times in sorted(ledger.faults.items()):
        print(f"  {kind:<36}{times:>5}")
    print(
        f"jobs submitted {ledger.submitted}, completed {ledger.completed}, "
        f"lost by crash {ledger.lost_by_crash} (acknowledged in the last {CRASH_LOSS_S:.0f} s "
        f"before a Redis crash or failover), lost {ledger.lost}, duplicated {ledger.duplicated}, "
        f"5xx {ledger.server_errors}"
    )
    if ledger.lost or ledger.duplicated or ledger.server_errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
