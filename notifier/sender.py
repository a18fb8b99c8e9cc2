"""One attempt at one delivery: check where it goes, sign it, POST it, judge the answer.

The host is resolved once and every address checked (``common.webhook_targets``); the request
goes to the checked address, with the URL's name kept in ``Host`` and in TLS's SNI (and so in the
certificate check). No redirect is followed, no proxy from the environment is used, at most
``max_response_bytes`` of the answer are read, and a host takes at most ``max_per_host`` attempts
at once, so one slow receiver cannot take every slot.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx

from common.webhook_targets import Blocked, Guard
from common.webhooks import Attempt, StoredDelivery
from notifier.signing import signature

USER_AGENT = "Darkroom-Webhooks/1"
# delivered: 2xx. retry: worth another attempt. blocked: the address is refused. gone: 410.
Verdict = Literal["delivered", "retry", "blocked", "gone"]


@dataclass(frozen=True)
class Outcome:
    attempt: Attempt
    verdict: Verdict
    # The receiver's Retry-After, in seconds from now.
    retry_after_s: float | None = None


def retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Sender:
    def __init__(
        self,
        guard: Guard,
        *,
        timeout_s: float,
        max_response_bytes: int,
        max_per_host: int,
    ) -> None:
        self._guard = guard
        self._max_response_bytes = max_response_bytes
        self._hosts: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(max_per_host)
        )
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False)
        self._timeout_s = timeout_s

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, delivery: StoredDelivery, secrets: list[str]) -> Outcome:
        at, began = datetime.now(UTC), time.monotonic()

        def attempt(status: int | None = None, error: str | None = None) -> Attempt:
            took_ms = int((time.monotonic() - began) * 1000)
            return Attempt(at=at, status_code=status, duration_ms=took_ms, error=error)

        try:
            target = await self._guard.target(delivery.url)
        except Blocked as exc:
            return Outcome(attempt(error=f"blocked: {exc}"), "blocked")
        except OSError as exc:
            return Outcome(attempt(error=f"could not resolve the host: {exc}"), "retry")
        timestamp = int(time.time())
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secrets, delivery.id, timestamp, delivery.payload),
        }
        extensions = {"sni_hostname": target.host} if delivery.url.startswith("https:") else {}
        async with self._hosts[target.host]:
            try:
                async with self._client.stream(
                    "POST",
                    target.connect_url,
                    content=delivery.payload.encode(),
                    headers=headers,
                    extensions=extensions,
                ) as response:
                    await self._read_some(response)
            except httpx.TimeoutException:
                return Outcome(attempt(error=f"no answer within {self._timeout_s:g} s"), "retry")
            except httpx.HTTPError as exc:
                return Outcome(attempt(error=f"{type(exc).__name__}: {exc}"), "retry")
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(attempt(status), "delivered")
        if status == 410:
            return Outcome(attempt(status, "410 Gone: nothing more is sent to this URL"), "gone")
        if 300 <= status < 400:
            where = response.headers.get("location", "?")
            return Outcome(attempt(status, f"redirect to {where} not followed"), "retry")
        wait_s = retry_after_s(response.headers.get("retry-after"))
        return Outcome(attempt(status, f"HTTP {status}"), "retry", wait_s)

    async def _read_some(self, response: httpx.Response) -> None:
        """Read at most ``max_response_bytes`` of the answer; the rest is never read."""
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= self._max_response_bytes:
                break
