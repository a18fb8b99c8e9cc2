"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed by the
bytes of a ``whsec_`` secret. During a rotation every valid secret signs, space-separated, so a
receiver that knows either one verifies."""

from __future__ import annotations

import base64
import hashlib
import hmac

from common.tenants import WEBHOOK_SECRET_PREFIX


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))


def signature(secrets_newest_first: list[str], msg_id: str, timestamp: int, body: str) -> str:
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets_newest_first
    )
