"""Every Redis key, stream, channel and consumer-group name Darkroom uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass

WORKERS_GROUP = "workers"
UPLOADERS_GROUP = "uploaders"
NOTIFIERS_GROUP = "notifiers"


@dataclass(frozen=True)
class Keys:
    """Names under one prefix, so several deployments (or test runs) can share a Redis."""

    prefix: str = "darkroom:"

    def job(self, job_id: str) -> str:
        """Hash: the job record (status, progress, params, result URLs, event sequence)."""
        return f"{self.prefix}job:{job_id}"

    def job_stream(self, model: str) -> str:
        """The route's *ready* stream, group ``workers``: the few jobs the scheduler
        (``common.scheduler``) moved out of the waiting lists for workers to read next, and the
        jobs being rendered (pending). Acked entries are deleted."""
        return f"{self.prefix}jobs:{model}"

    def backlog(self, model: str) -> str:
        """Stream with one entry per job of the route not yet rendered and handed on (waiting
        or in flight): added at submit, deleted at the job's end. Its length is what KEDA
        scales workers on and what ``max_queue`` limits. No consumer reads it."""
        return f"{self.prefix}backlog:{model}"

    @property
    def scheduler_prefix(self) -> str:
        """What every scheduler key begins with; Lua scripts append ``<route>:<class>:…``."""
        return f"{self.prefix}sched:"

    def waiting(self, model: str, priority: str, tenant: str) -> str:
        """List: one tenant's jobs of one priority class waiting on a route, oldest first."""
        return f"{self.scheduler_prefix}{model}:{priority}:wait:{tenant}"

    def turns(self, model: str, priority: str) -> str:
        """Sorted set: the tenants with jobs waiting in one class of a route, scored by the
        cost served to them so far (fair share: the lowest goes next)."""
        return f"{self.scheduler_prefix}{model}:{priority}:turns"

    def turns_clock(self, model: str, priority: str) -> str:
        """String: the score the last job taken in one class of a route started from; a tenant
        that starts waiting joins the turns there. Deleted when no tenant waits."""
        return f"{self.scheduler_prefix}{model}:{priority}:clock"

    def waiting_since(self, model: str, priority: str) -> str:
        """Sorted set: every job waiting in one class of a route, scored by when it was
        queued (aging, counting, the oldest first)."""
        return f"{self.scheduler_prefix}{model}:{priority}:since"

    @property
    def rendered(self) -> str:
        """Stream of rendered outputs waiting for the uploader; group ``uploaders``."""
        return f"{self.prefix}rendered"

    @property
    def webhook_events(self) -> str:
        """Stream of the events that jobs asked webhooks for; group ``notifiers``. Acked entries
        are deleted: it holds only work."""
        return f"{self.prefix}events"

    def webhook_delivery(self, delivery_id: str) -> str:
        """Hash: one webhook delivery (URL, tenant, payload, state, attempts), kept for the
        whole retry schedule plus a day, beyond its job's record."""
        return f"{self.prefix}webhook:{delivery_id}"

    def webhook_deliveries(self, job_id: str) -> str:
        """Sorted set: a job's webhook delivery ids by creation time (the delivery log)."""
        return f"{self.prefix}webhooks:{job_id}"

    @property
    def webhook_due(self) -> str:
        """Sorted set: delivery ids by the Unix time of their next attempt. A notifier leases one
        by moving its time forward; if it dies mid-attempt, the lease runs out and another sends
        it again, with the same ``webhook-id``."""
        return f"{self.prefix}webhookdue"

    def webhook_gone(self, tenant: str, url_sha256: str) -> str:
        """String: a receiver URL that answered 410 Gone; nothing more is sent to it."""
        return f"{self.prefix}webhookgone:{tenant}:{url_sha256}"

    @property
    def dead(self) -> str:
        """Stream of entries that exhausted their delivery attempts."""
        return f"{self.prefix}dead"

    @property
    def dead_counts(self) -> str:
        """Hash: how many entries each stream has moved to ``dead`` ever, by the stream's name
        (one field per stream); the dead stream itself is capped, these counts are not."""
        return f"{self.prefix}deadcounts"

    def blob(self, job_id: str, name: str) -> str:
        """String: input or output bytes in transit, with a TTL."""
        return f"{self.prefix}blob:{job_id}:{name}"

    def input_blob(self, job_id: str) -> str:
        """String: a job's input image, from submit until the job ends."""
        return self.blob(job_id, "input")

    def progress_channel(self, job_id: str) -> str:
        """Pub/sub channel of live events for one job."""
        return f"{self.prefix}progress:{job_id}"

    @property
    def progress_pattern(self) -> str:
        """Pattern matching every job's progress channel: one subscription per status process."""
        return f"{self.prefix}progress:*"

    def job_id_from_channel(self, channel: str) -> str:
        return channel.removeprefix(f"{self.prefix}progress:")

    def preview(self, job_id: str) -> str:
        """String with a short TTL: a rendering job's latest preview (``common.previews``), the
        only one kept; written while it renders, deleted when its render ends."""
        return f"{self.prefix}preview:{job_id}"

    def preview_channel(self, job_id: str) -> str:
        """Pub/sub channel of one job's live previews (never logged, never replayed)."""
        return f"{self.prefix}previews:{job_id}"

    @property
    def preview_pattern(self) -> str:
        """Pattern matching every job's preview channel."""
        return f"{self.prefix}previews:*"

    def job_id_from_preview_channel(self, channel: str) -> str:
        return channel.removeprefix(f"{self.prefix}previews:")

    def job_events(self, job_id: str) -> str:
        """Capped stream of one job's events; entry id ``<seq>-0``, so a replay is a range."""
        return f"{self.prefix}jobevents:{job_id}"

    def batch(self, batch_id: str) -> str:
        """Hash: a batch's record (tenant, seed API, size, items not yet ended); its items are
        ordinary jobs. Lives while any item is unfinished, then ``task_ttl_s`` like a job."""
        return f"{self.prefix}batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """List: a batch's job ids in request order; expires with the batch's record."""
        return f"{self.prefix}batchjobs:{batch_id}"

    @property
    def workers(self) -> str:
        """Hash: each live worker's latest heartbeat (its loaded routes and device), by consumer
        name; read in one call, stale fields pruned by the sweeper."""
        return f"{self.prefix}workers"

    def probe(self, consumer: str) -> str:
        """String with a short TTL: a service's readiness probe writes it to prove Redis takes
        writes."""
        return f"{self.prefix}probe:{consumer}"

    @property
    def deadlines(self) -> str:
        """Sorted set: unfinished jobs with a ``Cancel-After`` deadline, scored by it."""
        return f"{self.prefix}deadlines"

    @property
    def inputs(self) -> str:
        """Sorted set: input blobs waiting in Redis, member ``<job_id>:<bytes>``, scored by the
        time their TTL ends."""
        return f"{self.prefix}inputs"

    @property
    def input_bytes(self) -> str:
        """Integer: the bytes of every input blob in ``inputs``; submits past the cap wait."""
        return f"{self.prefix}inputbytes"

    def tenant_input_bytes(self, tenant: str) -> str:
        """Integer: the bytes of one tenant's input blobs in ``inputs`` (its share of the cap);
        deleted when it falls to zero."""
        return f"{self.prefix}inputbytes:{tenant}"

    def tenant_jobs(self, tenant: str) -> str:
        """Sorted set: one tenant's jobs queued or running (not yet terminal), scored by their
        submission time; its size is what ``max_queued`` limits."""
        return f"{self.prefix}tenantjobs:{tenant}"

    def rate(self, tenant: str) -> str:
        """Sorted set: one tenant's submit requests in the last minute, scored by time in ms."""
        return f"{self.prefix}rate:{tenant}"

    @property
    def sweeper_lock(self) -> str:
        """Lock: the one sweeper replica that may act (deadlines, expired inputs, consumers)."""
        return f"{self.prefix}lock:sweeper"

    def idempotency(self, tenant: str, key: str) -> str:
        """String: the job an ``Idempotency-Key`` made; per tenant, so tenants never share one.
        Tenant names hold no ``:`` (``common.tenants.NAME_PATTERN``)."""
        return f"{self.prefix}idem:{tenant}:{key}"

    def result_cache(self, digest: str) -> str:
        """String: a finished result's stored object keys (``common.result_cache``), by the
        digest of its request and its route's render fingerprint; expires with the objects."""
        return f"{self.prefix}cache:{digest}"

    def tenant(self, name: str) -> str:
        """Hash: one API key's record (admin flag, creation and last use, the key's SHA-256)."""
        return f"{self.prefix}tenant:{name}"

    @property
    def revocations(self) -> str:
        """Pub/sub channel: the name of each revoked key, so open SSE feeds made with it close."""
        return f"{self.prefix}revoked"

    @property
    def api_keys(self) -> str:
        """Hash: SHA-256 (hex) of each live API key -> its tenant's name; one lookup per request."""
        return f"{self.prefix}apikeys"

    @property
    def job_token_secret(self) -> str:
        """String: the secret signing read-only job tokens (``gateway.job_tokens``), made once."""
        return f"{self.prefix}jobtokensecret"

    def usage(self, tenant: str, day: str) -> str:
        """Hash: one tenant's usage on one UTC day (``YYYY-MM-DD``): finished jobs by route and
        outcome, GPU-seconds, output bytes, cost (``common.usage``); expires after the usage
        retention."""
        return f"{self.usage_prefix}{tenant}:{day}"

    @property
    def usage_prefix(self) -> str:
        """What every ``usage`` key begins with; Lua scripts append ``<tenant>:<day>``."""
        return f"{self.prefix}usage:"
