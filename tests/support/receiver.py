"""A webhook receiver on loopback for tests: it records every request and answers from a script
(status, headers, a delay), then 200. It can be stopped and started again on the same port."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from common.redis_server import free_port


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # With a receiver given its secrets: the signature checked on arrival, as a real receiver
    # does (the package refuses a timestamp over five minutes old, so a long test cannot check
    # its early arrivals at the end): the payload, or why every secret refused it.
    checked: dict[str, Any] | str | None = None

    @property
    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> dict[str, Any]:
        """The payload, after the ``standardwebhooks`` package has checked the signature (it
        raises ``WebhookVerificationError`` otherwise): on arrival, against the receiver's
        secrets, if it had any."""
        if isinstance(self.checked, str):
            raise WebhookVerificationError(self.checked)
        if self.checked is not None:
            return self.checked
        found: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return found


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        # Secrets to check signatures with on arrival (one per tenant); none: not checked here.
        self.secrets: list[str] = []
        self.received: list[Received] = []
        self.answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def url_named(self, host: str) -> str:
        return f"http://{host}:{self.port}/hook"

    def answer(self, *answers: Answer) -> None:
        with self._lock:
            self.answers.extend(answers)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # the http.server API
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                checked: dict[str, Any] | str | None = None
                for secret in list(receiver.secrets):
                    try:
                        checked = Webhook(secret).verify(body, headers)
                        break
                    except WebhookVerificationError as refused:
                        checked = str(refused) or "refused"
                with receiver._lock:
                    receiver.received.append(
                        Received(self.path, headers, body, at=time.time(), checked=checked)
                    )
                    answer = receiver.answers.popleft() if receiver.answers else Answer()
                time.sleep(answer.delay_s)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of_job(self, job_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.json["data"]["id"] == job_id]
