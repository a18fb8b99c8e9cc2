"""The web playground at ``/ui``: static files from ``gateway/ui/`` (hand-written HTML, CSS and
JavaScript, no build step, nothing fetched from elsewhere), open without a key like ``/docs``;
the page itself asks for a key when the API needs one."""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).parent / "ui"
PATH = "/ui"


def playground_routes() -> list[BaseRoute]:
    # The page names its assets from the app's root path, so it works behind a path prefix.
    page = (UI_DIR / "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        root = html.escape(request.scope.get("root_path", ""))
        return HTMLResponse(page.replace("{root}", root), headers={"Cache-Control": "no-cache"})

    return [
        Route(PATH, index, methods=["GET"], include_in_schema=False),
        Route(PATH + "/", index, methods=["GET"], include_in_schema=False),
        Mount(PATH + "/assets", StaticFiles(directory=UI_DIR), name="ui-assets"),
    ]
