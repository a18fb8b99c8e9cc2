"""Screenshots of the playground for the README: a job mid-render and done, at desktop and phone
width, plus a multi-angle grid. Run against a live stack (``uv run darkroom up``):

    uv run python docs/screenshots/take.py [--url http://localhost:8000] [--api-key KEY]

It drives Debian's ``chromium`` with Playwright and writes the PNGs next to this file.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).parent
WAIT_MS = 600_000
SIZES = {"desktop": (1440, 960), "phone": (390, 844)}
PROMPT = "A lighthouse on a basalt cliff at dusk, long exposure, fog rolling in"


def open_playground(page: Page, url: str, api_key: str | None) -> None:
    page.goto(f"{url}/ui")
    if api_key:
        page.evaluate("key => localStorage.setItem('darkroom.apiKey', key)", api_key)
        page.reload()
    page.get_by_label("Model").select_option("sd")
    page.get_by_label("Text → image").check()


def render(page: Page, name: str, *, steps: str, width: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Width").fill(width)
    page.get_by_label("Height").fill(width)
    page.get_by_label("Steps").fill(steps)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 30",
        timeout=WAIT_MS,
    )
    if page.get_by_label("Live previews").is_checked():
        page.get_by_role("img", name="Live preview of the render").wait_for(timeout=WAIT_MS)
    page.screenshot(path=HERE / f"{name}-rendering.png", full_page=True)
    page.locator("#result img").first.wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "[...document.querySelectorAll('#result img')].every(i => i.complete && i.naturalWidth)"
    )
    page.screenshot(path=HERE / f"{name}-done.png", full_page=True)


def multi_angle(page: Page) -> None:
    page.get_by_label("Model").select_option("qwen-multi-angle")
    page.get_by_label("Multi-angle from text").check()
    page.get_by_label("Prompt", exact=True).fill("A red armchair in a white studio")
    for angle in ("back", "top-down", "close-up"):
        page.get_by_label(angle, exact=True).uncheck()
    page.get_by_label("Width").fill("256")
    page.get_by_label("Height").fill("256")
    page.get_by_label("Steps").fill("8")
    page.get_by_role("button", name="Generate").click()
    page.locator("#result.grid img").nth(2).wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "[...document.querySelectorAll('#result img')].every(i => i.complete && i.naturalWidth)"
    )
    page.screenshot(path=HERE / "desktop-multi-angle.png", full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--api-key")
    parser.add_argument("--steps", default="120", help="enough to catch it mid-render")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        try:
            for name, (width, height) in SIZES.items():
                context = browser.new_context(
                    viewport={"width": width, "height": height}, device_scale_factor=1
                )
                page = context.new_page()
                open_playground(page, args.url, args.api_key)
                render(page, name, steps=args.steps, width="384" if name == "phone" else "512")
                if name == "desktop":
                    multi_angle(page)
                context.close()
        finally:
            browser.close()
    for path in sorted(HERE.glob("*.png")):
        print(path)


if __name__ == "__main__":
    main()
