"""Checking a Darkroom webhook: Standard Webhooks' HMAC-SHA256 over ``id.timestamp.body``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from darkroom_client.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"
# Standard Webhooks' default: a request older or newer than this is refused (replays).
TOLERANCE_S = 5 * 60


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not a whsec_ base64 secret") from None


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | list[str],
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The webhook's JSON body if ``webhook-signature`` holds a valid signature by ``secret`` (or
    by any of several, during a rotation) and ``webhook-timestamp`` is within ``tolerance_s``;
    else :class:`WebhookVerificationError`. ``payload`` is the raw body, as received."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"bad webhook-timestamp {timestamp!r}") from None
    if abs((time.time() if now is None else now) - sent_at) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old or in the future")
    body = payload if isinstance(payload, bytes) else payload.encode()
    signed = f"{msg_id}.{sent_at}.".encode() + body
    offered = [s.partition(",")[2] for s in signatures.split() if s.startswith("v1,")]
    for one in [secret] if isinstance(secret, str) else secret:
        expected = base64.b64encode(hmac.new(_key(one), signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            parsed: dict[str, Any] = json.loads(body)
            return parsed
    raise WebhookVerificationError("no valid signature")
