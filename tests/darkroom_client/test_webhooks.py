"""``verify_webhook`` agrees with the Standard Webhooks reference library and with the notifier."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from darkroom_client import WebhookVerificationError, verify_webhook
from notifier.signing import signature

SECRET = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes ok!").decode()
OTHER = "whsec_" + base64.b64encode(b"another secret, thirty-two bytes").decode()
BODY = json.dumps({"type": "job.completed", "data": {"session_id": "j1", "status": "completed"}})


def _headers(secret: str, msg_id: str = "msg_1", at: float | None = None) -> dict[str, str]:
    sent = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, sent, BODY),
    }


def test_a_signature_made_by_the_reference_library_verifies() -> None:
    event = verify_webhook(BODY.encode(), _headers(SECRET), SECRET)
    assert event["data"]["session_id"] == "j1"
    # Header names in any case; the old and the new secret during a rotation.
    upper = {k.title(): v for k, v in _headers(SECRET).items()}
    assert verify_webhook(BODY, upper, [OTHER, SECRET])["type"] == "job.completed"


def test_the_notifiers_signature_verifies_here_and_in_the_reference_library() -> None:
    now = int(time.time())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(now),
        "webhook-signature": signature([OTHER, SECRET], "msg_2", now, BODY),
    }
    assert verify_webhook(BODY, headers, SECRET) == Webhook(SECRET).verify(BODY, headers)


@pytest.mark.parametrize(
    ("body", "headers", "secret"),
    [
        (BODY.replace("completed", "failed"), _headers(SECRET), SECRET),  # tampered body
        (BODY, _headers(OTHER), SECRET),  # another tenant's secret
        (BODY, _headers(SECRET, at=time.time() - 3600), SECRET),  # an old replay
        (BODY, {"webhook-id": "m", "webhook-timestamp": "1"}, SECRET),  # no signature
    ],
)
def test_anything_else_is_refused(body: str, headers: dict[str, str], secret: str) -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, secret)
    with pytest.raises(Exception):  # noqa: B017  the reference library refuses it too
        Webhook(secret).verify(body, headers)
