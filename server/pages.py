"""Pages for people, all served from local files so they work with no network at all:

    /, /playground   the playground (server/static/): try chat requests with Best-of-N and
                     see every candidate's reward, compare two models side by side, and with
                     the admin key browse the registry and promote aliases
    /docs, /redoc    Swagger UI and ReDoc over /openapi.json, with an Authorize button for
                     the API and admin bearer keys (server/deps.py declares both schemes)

The pages are open (server/auth.py): they hold no data, and every API call the playground
makes carries the key its user typed. Swagger UI's and ReDoc's files come from the pinned
`fastapi-offline` wheel (its `static/` folder; bonserve uses only those files). ReDoc's
bundle has one hard-wired request to the internet, its footer's logo: `redoc_js` serves the
bundle with that image replaced by an empty inline one.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))

# The playground loads nothing but its own files and talks only to this server.
PLAYGROUND_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"

pages_router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@pages_router.get("/")
async def index(request: Request) -> Response:
    return RedirectResponse(f"{_root(request)}/playground")


@pages_router.get("/playground")
async def playground() -> Response:
    return FileResponse(
        STATIC / "playground.html",
        media_type="text/html",
        headers={"Content-Security-Policy": PLAYGROUND_CSP, "Cache-Control": "no-cache"},
    )


@pages_router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon.svg",
        # no online validator badge (a request to the internet); show each call's duration
        swagger_ui_parameters={"validatorUrl": None, "displayRequestDuration": True},
    )


@cache
def _offline_redoc() -> bytes:
    bundle = (DOCS_ASSETS / "redoc.standalone.js").read_bytes()
    if REDOC_LOGO not in bundle:  # a new fastapi-offline: check what it loads before pinning it
        raise RuntimeError("redoc.standalone.js changed: its logo URL is gone")
    return bundle.replace(REDOC_LOGO, EMPTY_SVG)


@pages_router.get("/docs-assets/redoc.offline.js")
async def redoc_js() -> Response:
    return Response(_offline_redoc(), media_type="text/javascript")


@pages_router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/docs-assets/redoc.offline.js",
        redoc_favicon_url=f"{root}/static/favicon.svg",
        with_google_fonts=False,
    )


def install_pages(app: FastAPI) -> None:
    """The page routes and their static files (the app is built with docs_url=None and
    redoc_url=None: FastAPI's own pages load their assets from a CDN)."""
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
