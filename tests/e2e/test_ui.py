"""The playground at /ui in Chromium against a live stack with API keys (a worker serving the tiny
``sd`` and ``ltx`` checkpoints, the uploader, the gateway): a key is asked for, an image and a
video are rendered and shown, a running job is canceled after a reload resumed its feed, and the
history survives reloads. One browser for the module; its pages share localStorage."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from common.redis_server import RedisServer
from tests.conftest import _stack
from tests.support.keys import create_key
from tests.support.stack import Stack

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's package)"
)
RENDER_MS = 120_000
PROGRESS = "Number(document.querySelector('[role=progressbar]').getAttribute('aria-valuenow'))"
LOADED = "[...document.querySelectorAll('#result img')].some(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def keyed_stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A gateway alone with API keys: its jobs wait in their queues."""
    stack = _stack(
        "ui-keys",
        ("gateway",),
        redis_server,
        models_file,
        tmp_path_factory,
        {"DARKROOM_AUTH": "keys"},
    )
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
async def page(browser: Browser, local_stack: Stack) -> AsyncIterator[Page]:
    """The playground on the stack with a worker (auth off, as ``darkroom up`` runs)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(f"{local_stack.base_url}/ui")
    await expect(page.get_by_label("Model")).to_have_value("sd")
    yield page
    await context.close()


async def compose(page: Page, *, model: str, task: str, prompt: str, side: int, steps: int) -> None:
    await page.get_by_label("Model").select_option(model)
    await page.get_by_label(task).check()
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_label("Width").fill(str(side))
    await page.get_by_label("Height").fill(str(side))
    await page.get_by_label("Steps").fill(str(steps))


async def server_status(stack: Stack, job_id: str, api_key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=stack.base_url, headers=headers) as http:
        answer = await http.get(f"/api/{job_id}/status")
    return str(answer.raise_for_status().json()["status"])


async def current_job(page: Page) -> str:
    meta = await page.locator("#job-meta").text_content()
    assert meta
    return meta.rsplit(" · ", 1)[-1]


def test_the_page_and_its_assets_are_open_and_linked_from_the_docs(keyed_stack: Stack) -> None:
    with httpx.Client(base_url=keyed_stack.base_url) as http:
        assert http.get("/api/models").status_code == 401  # the API needs a key; the page not
        assert http.get("/ui").status_code == 200
        assert http.get("/ui/assets/app.js").status_code == 200
        assert 'href="/ui"' in http.get("/docs").text


async def test_controls_have_accessible_names(page: Page) -> None:
    model = page.get_by_role("combobox", name="Model")
    assert set(await model.locator("option").all_text_contents()) >= {
        "sd · stable-diffusion",
        "ltx · ltx-video",
    }
    await expect(page.get_by_role("textbox", name="Prompt", exact=True)).to_be_editable()
    await expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    await expect(page.get_by_role("radio", name="Text → image")).to_be_visible()
    # Cancel appears only while a job runs.
    await expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()


async def test_generate_shows_the_image_with_a_download_link(
    page: Page, local_stack: Stack
) -> None:
    await compose(page, model="sd", task="Text → image", prompt="a quiet harbour", side=64, steps=2)
    # From the keyboard, as the page says: Ctrl+Enter in the form.
    await page.get_by_label("Prompt", exact=True).press("Control+Enter")
    await page.wait_for_function(LOADED, timeout=RENDER_MS)

    image = page.locator("#result img").first
    assert await image.evaluate("i => i.naturalWidth") == 64
    src = await image.get_attribute("src")
    assert src and src.endswith(".png")
    download = page.get_by_role("link", name="Download", exact=True)
    assert await download.get_attribute("href") == src
    await expect(page.locator("#status")).to_have_text("Done.")
    assert await server_status(local_stack, await current_job(page)) == "completed"
    await expect(page.locator("#history li").first).to_contain_text("a quiet harbour")


async def test_a_preview_appears_before_the_result(page: Page) -> None:
    await compose(page, model="sd", task="Text → image", prompt="previewed", side=256, steps=40)
    await page.get_by_label("Live previews").check()
    await page.get_by_role("button", name="Generate").click()
    preview = page.get_by_role("img", name="Live preview of the render")
    await expect(preview).to_be_visible(timeout=RENDER_MS)
    assert (await preview.get_attribute("src") or "").startswith("data:image/jpeg;base64,")
    assert await page.locator("#result img").count() == 0  # before the result
    await page.wait_for_function(LOADED, timeout=RENDER_MS)
    await expect(preview).to_be_hidden()


async def test_a_reloaded_page_resumes_the_feed_and_cancel_stops_the_job(
    page: Page, local_stack: Stack
) -> None:
    await compose(page, model="sd", task="Text → image", prompt="a long one", side=2048, steps=150)
    # The stage shows the last job, if any, its bar at 100, until the new one is accepted.
    earlier = await page.locator("#job-meta").text_content()
    await page.get_by_role("button", name="Generate").click()
    if earlier:
        await expect(page.locator("#job-meta")).not_to_have_text(earlier, timeout=RENDER_MS)
    job_id = await current_job(page)
    await page.wait_for_function(f"{PROGRESS} > 0", timeout=RENDER_MS)
    seen = await page.evaluate(PROGRESS)

    await page.reload()
    # The feed resumes: the job is back on the stage and its progress keeps moving.
    await expect(page.locator("#job-meta")).to_contain_text(job_id)
    await page.wait_for_function(f"{PROGRESS} > {seen}", timeout=RENDER_MS)
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await expect(page.locator("#status")).to_have_text("Canceled.", timeout=RENDER_MS)
    await expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()
    assert await server_status(local_stack, job_id) == "canceled"


async def test_text_to_video_plays_in_a_video_element(page: Page) -> None:
    await compose(page, model="ltx", task="Text → video", prompt="waves", side=64, steps=2)
    await page.get_by_label("Frames").fill("9")
    await page.get_by_role("button", name="Generate").click()
    video = page.locator("#result video")
    await video.wait_for(timeout=RENDER_MS)
    await page.wait_for_function(
        "document.querySelector('#result video').readyState >= 2", timeout=RENDER_MS
    )
    assert (await video.get_attribute("src") or "").endswith(".mp4")


async def test_the_history_survives_a_reload(page: Page) -> None:
    await page.reload()
    items = page.locator("#history li")
    await expect(items.first).to_contain_text("waves")
    await expect(items.filter(has_text="a long one")).to_contain_text("canceled")
    harbour = items.filter(has_text="a quiet harbour")
    await expect(harbour).to_contain_text("completed")
    # The latest job is on the stage again; an earlier one comes back from its status route.
    await page.wait_for_function(
        "document.querySelector('#result video')?.readyState >= 2", timeout=RENDER_MS
    )
    await harbour.get_by_role("button").click()
    await page.wait_for_function(LOADED, timeout=RENDER_MS)
    await expect(page.locator("#status")).to_have_text("Done.")


async def test_with_keys_the_page_asks_for_one_and_follows_jobs_with_their_token(
    browser: Browser, keyed_stack: Stack
) -> None:
    api_key = create_key(keyed_stack, f"ui-{uuid.uuid4().hex[:8]}")
    context = await browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    feeds: list[str] = []
    context.on("request", lambda r: feeds.append(r.url) if "/events" in r.url else None)
    try:
        page = await context.new_page()
        await page.goto(f"{keyed_stack.base_url}/ui")
        key_field = page.get_by_label("API key")
        await expect(key_field).to_be_focused()  # the API said 401: the page asks
        await key_field.fill(api_key)
        await page.get_by_role("button", name="Save key").click()
        await expect(page.get_by_label("Model")).to_have_value("sd")

        await page.get_by_label("Prompt", exact=True).fill("waits for a worker")
        await page.get_by_role("button", name="Generate").click()
        # No worker here: the job waits, and the feed's queue frames say where.
        await expect(page.locator("#status")).to_contain_text(
            "Queued · next in line", timeout=20_000
        )
        job_id = await current_job(page)
        assert feeds and all("token=djt_" in url and api_key not in url for url in feeds)

        await page.get_by_role("button", name="Cancel", exact=True).click()
        await expect(page.locator("#status")).to_have_text("Canceled.")
        assert await server_status(keyed_stack, job_id, api_key) == "canceled"
        # The key stays in this browser only.
        assert await page.evaluate("localStorage.getItem('darkroom.apiKey')") == api_key
    finally:
        await context.close()
