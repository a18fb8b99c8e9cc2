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
A notifier runs beside them, and a share of the jobs ask for a webhook to a receiver on loopback;
two more faults strike it: the notifier SIGKILLed (and started again) and the receiver down for a
while (and started again on the same port). The retry schedule is seconds long, yet it outlasts
any outage the soak makes.
A submit that meets an outage is retried with the same ``Idempotency-Key``, as a careful client
would, so a retry never makes a second job. When the time is up the faults stop, and every job
must complete with exactly one object in the bucket, except that a Redis crash may take back what
was acknowledged in the last second before it (``CRASH_LOSS_S``), and so may a failover: such jobs
are counted apart as lost by crash; one acknowledged earlier and gone is lost. S3 AccessDenied for a
while (the uploader's identity loses its write permission, then gets it back, without a restart)
fails the jobs whose upload meets it, at once and by design: they are counted apart as failed by a
storage fault, so completed + failed by a storage fault + lost by crash = submitted. Every job that
asked for a webhook must have its terminal event delivered, signed (checked by the
``standardwebhooks`` package), at least once and under one ``webhook-id`` however often.
``tests/faults/test_soak.py`` runs a short soak in the suite; this command runs a long one.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from common.catalog import demo_catalog, write_catalog
from common.redis_server import RedisServer, free_port
from common.schemas import JobRecord, JobStatus
from common.tenants import PRIORITIES, new_webhook_secret
from tests.support.fleet import UUID_RE, check_alive, wait_all_terminal
from tests.support.keys import tenant_keys, tenant_names, webhook_secret
from tests.support.ledger import Ledger
from tests.support.receiver import Received, Receiver
from tests.support.s3_server import (
    WRITER_ACCESS_KEY_ID,
    WRITER_SECRET_ACCESS_KEY,
    S3Server,
    start_s3_server,
)
from tests.support.stack import Stack, stack_env

BUCKET = "soak"
SMALL = {"prompt": "soak", "width": 64, "height": 64, "num_inference_steps": 2}
# Long enough on the tiny checkpoint for a kill to land mid-render.
LONG = {"prompt": "soak, long", "width": 512, "height": 512, "num_inference_steps": 20}
SUBMIT_RETRY_S = 120.0
# Redis's promise with ``appendfsync everysec``: a crash loses at most the last second of writes.
CRASH_LOSS_S = 1.0
# A response already on its way when a crash or failover struck: written just before it, its
# acknowledgement read just after.
IN_FLIGHT_S = 0.5
# The share of jobs that ask for a webhook (their terminal event: the default filter).
WEBHOOK_SHARE = 0.5
# Jobs come from this many tenants (API keys), in every priority class.
TENANTS = 3
# A soak makes at least this many faults, past its duration if need be.
MIN_FAULTS = 3
# How long the receiver stays down, at most; the retry schedule outlasts two such outages back to
# back (attempts over about 30 s, the last three 8 s apart), so a terminal event is never out of
# attempts when the faults stop.
RECEIVER_OUTAGE_S = (1.0, 6.0)
WEBHOOK_SCHEDULE_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0)
# An attempt's timeout; a notifier killed mid-send leaves its delivery to be sent again once its
# lease (this plus ``common.webhooks.LEASE_MARGIN_S``) runs out.
WEBHOOK_TIMEOUT_S = 2.0
# After the jobs end, how long their terminal events may take to arrive: the whole schedule with
# its jitter, a lease and a margin.
WEBHOOK_SETTLE_S = sum(WEBHOOK_SCHEDULE_S) * 1.2 + WEBHOOK_TIMEOUT_S + 15.0
TERMINAL_EVENTS = ("job.completed", "job.failed", "job.canceled")
# How a job that met the AccessDenied fault ends (``uploader.uploader``, ``uploader.storage``).
DENIED_ERROR = "Could not store the result: AccessDenied"


class Soak:
    def __init__(self, root: Path, models_file: Path, s3: S3Server, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(seed + 1)
        self.root = root
        self.s3 = s3
        root.mkdir(parents=True, exist_ok=True)
        admin = s3.client()
        with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
            admin.create_bucket(Bucket=BUCKET)
        self.redis = RedisServer(root / "redis", appendonly=True, appendfsync="everysec")
        self.redis.start()
        self.webhook_secret = new_webhook_secret()
        self.receiver = Receiver().start()
        port = free_port()
        env = stack_env(
            redis_url=self.redis.url,
            prefix="soak:",
            models_file=models_file,
            workdir=root,
            port=port,
            extra={
                **s3.storage_env(BUCKET),
                # An identity whose writes the AccessDenied fault can take away for a while; it
                # may not create buckets, so the bucket is made here.
                "AWS_ACCESS_KEY_ID": WRITER_ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": WRITER_SECRET_ACCESS_KEY,
                "DARKROOM_S3_CREATE_BUCKET": "false",
                "DARKROOM_ROUTES": "sd",
                "DARKROOM_CLAIM_IDLE_MS": "2000",
                "DARKROOM_DRAIN_GRACE_S": "3",
                "DARKROOM_TORCH_THREADS": "1",
                "DARKROOM_WEBHOOK_ALLOW_NETS": "127.0.0.0/8,::1/128",
                "DARKROOM_WEBHOOK_RETRY_SCHEDULE_S": ",".join(map(str, WEBHOOK_SCHEDULE_S)),
                "DARKROOM_WEBHOOK_TIMEOUT_S": str(WEBHOOK_TIMEOUT_S),
                # Several tenants, each job of one of them, signed with its tenant's secret.
                "DARKROOM_AUTH": "keys",
                "DARKROOM_WEBHOOK_SECRET": self.webhook_secret,
            },
        )
        self.stack = Stack(name="soak", workdir=root, env=env, port=port)
        self.ledger = Ledger(test="tests/faults/soak.py")
        # When each job's submit was acknowledged (200), and when Redis crashed (monotonic s).
        self.acked_at: dict[str, float] = {}
        self.crashed_at: list[float] = []
        # The same crashes on the wall clock, which the receiver's timestamps use.
        self.crashed_at_wall: list[float] = []
        self.hooked: set[str] = set()  # jobs that asked for a webhook
        self.api_keys: list[str] = []  # one per tenant, made once the stack runs
        self._stop_submitting = threading.Event()

    @property
    def faults(self) -> dict[str, Callable[[], None]]:
        return {
            "worker SIGKILL (random moment)": lambda: self._restart_worker(signal.SIGKILL),
            "worker SIGTERM (random moment)": lambda: self._restart_worker(signal.SIGTERM),
            "uploader SIGKILL (random moment)": self._restart_uploader,
            "S3 outage (random length)": self._s3_outage,
            "S3 AccessDenied (random length)": self._s3_access_denied,
            "redis SIGKILL (AOF everysec)": self._redis_crash,
            "redis OOM (random length)": self._redis_full,
            "redis failover to a replica and back": self._redis_failover,
            "notifier SIGKILL (random moment)": self._restart_notifier,
            "webhook receiver outage (random length)": self._receiver_outage,
        }

    def run(self, duration_s: float) -> Ledger:
        self.stack.start("worker:a", "worker:b", "uploader", "notifier", "gateway")
        self.api_keys = tenant_keys(self.stack, TENANTS)
        self.receiver.secrets = [webhook_secret(self.stack, n) for n in tenant_names(TENANTS)]
        submitter = threading.Thread(target=self._submit_until_stopped, name="soak-submitter")
        submitter.start()
        try:
            deadline = time.monotonic() + duration_s
            kinds: list[str] = []
            made = 0
            # At least MIN_FAULTS, however slow this machine makes each one (a worker restart
            # can take half a minute on two busy cores): a short soak still sees variety.
            while time.monotonic() < deadline or made < MIN_FAULTS:
                time.sleep(self.fault_rng.uniform(2.0, 6.0))
                # Every kind once, in a random order, then again. The faults draw from their own
                # generator, so the seed alone fixes their order (the submitter draws from its).
                kinds = kinds or self.fault_rng.sample(sorted(self.faults), len(self.faults))
                made += 1
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
        self.receiver.stop()

    # -- the client ---------------------------------------------------------------------------

    def _submit_until_stopped(self) -> None:
        with httpx.Client(base_url=self.stack.base_url, timeout=30) as client:
            while not self._stop_submitting.is_set():
                body: dict[str, object] = LONG if self.rng.random() < 0.2 else SMALL
                hooked = self.rng.random() < WEBHOOK_SHARE
                if hooked:
                    body = {**body, "webhook": self.receiver.url}
                # Every class and tenant: jobs wait in each of the scheduler's structures.
                body = {**body, "priority": self.rng.choice(PRIORITIES)}
                api_key = self.rng.choice(self.api_keys)
                job_id = self._submit(client, body, api_key)
                self.acked_at[job_id] = time.monotonic()
                if hooked:
                    self.hooked.add(job_id)
                time.sleep(self.rng.uniform(0.1, 0.5))

    def _submit(self, client: httpx.Client, body: dict[str, object], api_key: str) -> str:
        """Submit once, retrying through outages with the same key: one job whatever happens."""
        headers = {"Idempotency-Key": str(uuid.uuid4()), "Authorization": f"Bearer {api_key}"}
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

    def _restart_notifier(self) -> None:
        self.stack.stop("notifier", signal.SIGKILL)
        self.stack.start("notifier")

    def _receiver_outage(self) -> None:
        """Connections refused for a while; then the receiver listens on the same port again."""
        self.receiver.stop()
        time.sleep(self.rng.uniform(*RECEIVER_OUTAGE_S))
        self.receiver.start()

    def _s3_outage(self) -> None:
        self.s3.stop()
        time.sleep(self.rng.uniform(1.0, 5.0))
        self.s3.start()

    def _s3_access_denied(self) -> None:
        """The uploader's identity may not write for a while: its uploads meet AccessDenied."""
        with self.s3.writes_denied(WRITER_ACCESS_KEY_ID):
            time.sleep(self.rng.uniform(1.0, 5.0))

    def _redis_crash(self) -> None:
        self.crashed_at.append(time.monotonic())
        self.crashed_at_wall.append(time.time())
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
            new.replicaof("NO", "ONE")
            old.replicaof("127.0.0.1", standby.port)
            # What the old primary took until now and the standby had not is gone with it: the
            # replication lag, and every write since the standby's promotion just above.
            self.crashed_at.append(time.monotonic())
            self.crashed_at_wall.append(time.time())
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
        denied = {
            job_id
            for job_id, rec in records.items()
            if rec is not None
            and rec.status is JobStatus.FAILED
            and (rec.error or "").startswith(DENIED_ERROR)
        }
        self.ledger.submitted += len(denied)
        self.ledger.failed_by_storage_fault += len(denied)
        gone = by_crash | denied
        kept = {job_id: rec for job_id, rec in records.items() if job_id not in gone}
        statuses = [rec.status.value if rec else "missing" for rec in kept.values()]
        self.ledger.outcome(statuses, [stored[job_id] for job_id in kept])
        self.ledger.duplicated += len(set(stored) - set(records))  # objects of no known job
        # A job failed by AccessDenied owes its webhook too: its terminal event is job.failed.
        ended = {j: rec for j, rec in records.items() if j not in by_crash and rec is not None}
        self._check_webhooks(ended)

    def _check_webhooks(self, records: dict[str, JobRecord]) -> None:
        """Every ended job that asked for a webhook: its terminal event delivered, signed, at
        least once, one ``webhook-id`` however often (receivers deduplicate on it)."""
        due = {job_id: rec for job_id, rec in records.items() if job_id in self.hooked}
        deadline = time.monotonic() + WEBHOOK_SETTLE_S
        while True:
            check_alive(self.stack)  # a notifier that died says so now, with its log
            got = self._terminal_events(due)
            if len(got) == len(due) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for job_id, seen in got.items():
            types = {payload["type"] for _, payload in seen}
            if types != {f"job.{due[job_id].status.value}"}:
                raise AssertionError(f"job {job_id} ended {due[job_id].status}; webhooks: {types}")
            ids = {received.webhook_id for received, _ in seen}
            if len(ids) > 1 and not self._taken_back(min(r.at for r, _ in seen)):
                raise AssertionError(f"job {job_id}'s terminal event came under ids {ids}")
        self.ledger.webhooks_due += len(due)
        self.ledger.webhooks_delivered += len(got)
        self.ledger.webhooks_duplicated += sum(len(seen) - 1 for seen in got.values())
        self.ledger.webhooks_lost += len(due) - len(got)

    def _terminal_events(
        self, due: dict[str, JobRecord]
    ) -> dict[str, list[tuple[Received, dict[str, Any]]]]:
        """The terminal events received for each due job, each with its verified payload."""
        found: defaultdict[str, list[tuple[Received, dict[str, Any]]]] = defaultdict(list)
        for received in list(self.receiver.received):
            # Raises WebhookVerificationError unless the signature holds.
            # Checked on arrival with each tenant's secret (the receiver's).
            payload = received.verified(self.webhook_secret)
            if payload["type"] in TERMINAL_EVENTS and payload["data"]["id"] in due:
                found[payload["data"]["id"]].append((received, payload))
        return found

    def _taken_back(self, delivered_at: float) -> bool:
        """A Redis crash or failover soon after a terminal event was delivered may take the event
        back with the job's end: the job ends again, and its event may then carry a new id."""
        return _near_fault(delivered_at, self.crashed_at_wall)

    def _new(self, job_id: str) -> bool:
        """Acknowledged within ``CRASH_LOSS_S`` before a crash or failover (or in flight as it
        struck): the AOF, or the standby, may not hold it."""
        return _near_fault(self.acked_at[job_id], self.crashed_at)

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


def _near_fault(at: float, faults: list[float]) -> bool:
    """``at`` is within ``CRASH_LOSS_S`` before one of ``faults``, or ``IN_FLIGHT_S`` after."""
    return any(-IN_FLIGHT_S <= fault - at <= CRASH_LOSS_S for fault in faults)


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
        f"failed by a storage fault {ledger.failed_by_storage_fault} (S3 AccessDenied), "
        f"lost by crash {ledger.lost_by_crash} (acknowledged in the last {CRASH_LOSS_S:.0f} s "
        f"before a Redis crash or failover), lost {ledger.lost}, duplicated {ledger.duplicated}, "
        f"5xx {ledger.server_errors}"
    )
    print(
        f"webhooks: terminal events due {ledger.webhooks_due}, delivered "
        f"{ledger.webhooks_delivered}, duplicated deliveries {ledger.webhooks_duplicated}, "
        f"lost {ledger.webhooks_lost}"
    )
    if ledger.lost or ledger.duplicated or ledger.server_errors or ledger.webhooks_lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
