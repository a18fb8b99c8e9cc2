"""What a webhook says: the Standard Webhooks shape, ``{"type", "timestamp", "data"}``, with the
job's event in the fields of the seed API the job came through. Links, never image bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from common.schemas import JobEvent


def body(fields: dict[str, str]) -> tuple[str, datetime]:
    """The exact JSON a delivery signs and sends, from a notifier stream entry; and its time."""
    event = JobEvent.model_validate_json(fields["event"])
    when = datetime.fromtimestamp(event.ts, UTC)
    data: dict[str, Any] = {
        "id": event.job_id,
        "progress": event.progress,
        "message": event.message,
        "result_urls": event.result_urls,
        "error": event.error,
    }
    if fields.get("api") == "v1":
        seed = json.loads(fields.get("params") or "{}").get("seed")
        data |= {"job_id": event.job_id, "status": event.status.v1, "seed": seed}
    else:
        first = event.result_urls[0] if event.result_urls else None
        data |= {"session_id": event.job_id, "status": event.status.value, "result_url": first}
    document = {"type": fields["type"], "timestamp": when.isoformat(), "data": data}
    return json.dumps(document, separators=(",", ":")), when
