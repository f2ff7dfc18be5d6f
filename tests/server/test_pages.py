"""The pages (server/pages.py) over the named fake engine: the playground and /docs, /redoc
are served from local files only, are open while the API stays behind its key, and the
OpenAPI document describes the playground's extension fields. The pages run in a real
browser against a real engine in tests/server/test_pages_e2e.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.pages import DOCS_ASSETS, STATIC

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.I)


@pytest.mark.parametrize("path", sorted(p.name for p in STATIC.iterdir()))
def test_static_files_reference_nothing_outside_the_server(path: str) -> None:
    assert not EXTERNAL.search((STATIC / path).read_text()), path


def test_static_files_ship_as_package_data() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["server"]
    assert all(any(Path("static", p.name).match(g) for g in patterns) for p in STATIC.iterdir())


def test_playground_offers_every_bon_selector() -> None:
    """Each run's bon_selector control lists exactly the request field's values (the
    selectors of server/selectors.py) after the server default, which is not sent."""
    from typing import get_args

    from server.protocol import SamplingFields
    from server.selectors import SELECTORS

    annotation = SamplingFields.model_fields["bon_selector"].annotation
    assert {v for arg in get_args(annotation) for v in get_args(arg)} == set(SELECTORS)
    html = (STATIC / "playground.html").read_text()
    for side in "ab":
        control = re.search(rf'<select id="selector-{side}"[^>]*>(.*?)</select>', html, re.S)
        assert control, side
        assert re.findall(r'<option value="([^"]*)"', control.group(1)) == ["", *SELECTORS], side
    js = (STATIC / "playground.js").read_text()
    assert "body.bon_selector = selector" in js and "extra.selector" in js


async def test_playground_is_open_and_loads_only_its_own_files(client_for: Callable[..., Any]) -> None:
    c = await client_for(api_key="client-key")
    assert (await c.get("/", follow_redirects=False)).headers["location"] == "/playground"
    page = await c.get("/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
        r = await c.get(asset)
        assert r.status_code == 200, asset
    assert (await c.get("/v1/models")).status_code == 401  # the page is open, the API is not


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_use_local_assets(client_for: Callable[..., Any], path: str) -> None:
    c = await client_for()
    html = (await c.get(path)).text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
    assert urls and all(u.startswith("/") for u in urls), urls
    for u in urls:
        assert (await c.get(u)).status_code == 200, u
    assert "fonts.googleapis" not in html and "cdn." not in html


async def test_redoc_bundle_loads_nothing_from_the_internet(client_for: Callable[..., Any]) -> None:
    """ReDoc's footer logo is its one hard-wired fetch; the served bundle has it inline."""
    from server.pages import REDOC_LOGO

    c = await client_for()
    js = (await c.get("/docs-assets/redoc.offline.js")).content
    assert len(js) > 500_000 and REDOC_LOGO not in js and b'src:"data:image/svg+xml' in js


def test_docs_assets_come_from_the_pinned_wheel() -> None:
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= {
        p.name for p in DOCS_ASSETS.iterdir()
    }


async def test_openapi_documents_the_extensions_and_both_keys(client_for: Callable[..., Any]) -> None:
    c = await client_for()
    spec = (await c.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        props = schemas[request]["properties"]
        assert props["return_candidates"]["default"] is False and props["return_candidates"]["description"]
        for extra in ("ignore_eos", "min_tokens", "stop_token_ids", "skip_special_tokens"):
            assert props[extra]["description"].startswith("vLLM"), extra
    for response in ("ChatCompletionResponse", "CompletionResponse"):
        assert "candidates" in schemas[response]["properties"]
    assert set(schemas["ScoredCandidate"]["required"]) >= {"index", "rank", "text", "reward"}
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "AdminKey"}
    assert spec["paths"]["/admin/registry"]["get"]["security"] == [{"AdminKey": []}]
    assert spec["paths"]["/tokenize"]["post"]["security"] == [{"ApiKey": []}]
