"""A browser's own EventSource on a job's feed, from a page that never calls close(): it sees every
event, then the feed ends and stays ended (Chromium reconnects once and gets 204)."""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.async_api import Request, Response, Route, async_playwright
from redis.asyncio import Redis

from common.jobs import JobStore
from common.keys import Keys
from common.schemas import JobStatus
from tests.gateway.test_feed import new_job
from tests.support.stack import Stack

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's package)"
)
WAIT_MS = 20_000  # Chromium waits about 3 s before it reconnects

# What most pages do: open the feed, show each event, never close it.
PAGE = """<!doctype html>
<script>
  window.seen = [];
  window.source = new EventSource(%s);
  window.source.onmessage = (e) => window.seen.push({id: e.lastEventId, ...JSON.parse(e.data)});
</script>
"""


async def test_a_page_that_never_closes_its_eventsource_is_let_go(
    status_stack: Stack, redis: Redis
) -> None:
    jobs = JobStore(redis, Keys(status_stack.prefix), task_ttl_s=60)
    job_id = await new_job(jobs)
    feed_path = f"/api/{job_id}/events"
    feed_url = status_stack.base_url + feed_path
    page_url = f"{status_stack.base_url}/follow.html"  # served below, same origin as the feed
    requests: list[str] = []
    statuses: list[int] = []

    def on_request(request: Request) -> None:
        if request.url == feed_url:
            requests.append(request.url)

    def on_response(response: Response) -> None:
        if response.url == feed_url:
            statuses.append(response.status)

    async def serve_page(route: Route) -> None:
        html = PAGE % json.dumps(feed_path)
        await route.fulfill(body=html, content_type="text/html")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page()
            page.on("request", on_request)
            page.on("response", on_response)
            await page.route(page_url, serve_page)
            await page.goto(page_url)
            await page.wait_for_function("window.seen.length === 1", timeout=WAIT_MS)

            await jobs.emit(job_id, status=JobStatus.PROCESSING, progress=50, message="step 1/2")
            await jobs.emit(job_id, status=JobStatus.COMPLETED, progress=100)
            await page.wait_for_function(
                "window.source.readyState === EventSource.CLOSED", timeout=WAIT_MS
            )
            seen = await page.evaluate("window.seen")
        finally:
            await browser.close()

    assert [(e["id"], e["status"]) for e in seen] == [
        ("1", "pending"),
        ("2", "processing"),
        ("3", "completed"),
    ]
    # At most one reconnect, and it was told there is nothing more (only a resume at or past the
    # terminal event gets a 204).
    assert len(requests) <= 2
    assert statuses in ([200], [200, 204])
