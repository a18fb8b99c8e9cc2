"""/openapi.json, Swagger UI at /docs and ReDoc at /redoc, with the UI assets served from a
package so the pages work without internet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles


def _assets_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ imports Django).
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("drf-spectacular-sidecar is not installed; it ships the docs UI assets")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "drf_spectacular_sidecar"


# A line above Swagger UI pointing to the playground, on the gateway that serves it.
PLAYGROUND_LINK = """<p style="margin:0;padding:10px 20px;background:#0b0c0f;color:#e7e8ec;
font:14px system-ui,sans-serif">Try it in the browser: <a href="{root}/ui"
style="color:#ffa36b">the playground at /ui</a></p>"""

SWAGGER_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} — Swagger UI</title>
<link rel="icon" href="{root}/docs/assets/swagger-ui-dist/favicon-32x32.png">
<link rel="stylesheet" href="{root}/docs/assets/swagger-ui-dist/swagger-ui.css"></head>
<body>{banner}<div id="swagger-ui"></div>
<script src="{root}/docs/assets/swagger-ui-dist/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{url: "{root}/openapi.json", dom_id: "#swagger-ui", deepLinking: true}});
</script>
</body></html>"""

REDOC_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} — ReDoc</title></head>
<body><redoc spec-url="{root}/openapi.json"></redoc>
<script src="{root}/docs/assets/redoc/bundles/redoc.standalone.js"></script>
</body></html>"""


def docs_routes(title: str, *, playground: bool = False) -> list[BaseRoute]:
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.state.openapi)

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        banner = PLAYGROUND_LINK.format(root=root) if playground else ""
        return HTMLResponse(SWAGGER_HTML.format(title=title, root=root, banner=banner))

    async def redoc(request: Request) -> HTMLResponse:
        return HTMLResponse(REDOC_HTML.format(title=title, root=request.scope.get("root_path", "")))

    return [
        Route("/openapi.json", openapi, include_in_schema=False),
        Route("/docs", swagger, include_in_schema=False),
        Route("/redoc", redoc, include_in_schema=False),
        Mount("/docs/assets", StaticFiles(directory=_assets_dir()), name="docs-assets"),
    ]
