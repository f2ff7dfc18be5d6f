"""The pages in a real headless browser, and vLLM's load generator, against one real server.

One `bonserve serve` (policy + reward model, an admin key, `--default-best-of 2`, a price per
hour) is shared by every test here, to keep engine time small:

- Debian's chromium, driven by selenium through Debian's chromedriver, loads the playground,
  /docs and /redoc: no request fails, none leaves the server (they work offline), and the
  browser logs no error (a CSP violation would be one);
- a person's Best-of-N run on the playground shows every candidate with its reward and the
  pick highlighted, the same candidates the API returns for that request; the admin section
  lists the registry with lineage and promotes an alias with the admin key; a run with
  bon_selector majority says which selector ranked and shows vote shares, no reward (#16);
- `vllm bench serve` (vLLM's own load generator) runs unchanged: 0 failed requests with
  the server's default best_of and with best_of=1.

The browser is installed by `make setup` (apt: chromium, chromium-driver). Without it the
tests fail under CI=true and skip elsewhere, saying why.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.registry import DEFAULT_MODEL_NAME, Manifest, Registry
from loadtests.interop import bench_args, run_bench
from loadtests.servers import ServerProcess, start_bonserve
from tests.synthetic import end_of_turn_head
from training.reward import init_reward_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MODEL = DEFAULT_MODEL_NAME
RM = "rm-pages"
ADMIN_KEY = "pages-admin-key"
MESSAGES = [{"role": "user", "content": "Suggest a name for a pet goldfish."}]
SCREENSHOT = os.environ.get("BONSERVE_PLAYGROUND_SCREENSHOT")  # e.g. docs/playground.png


def _need_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        reason = f"no headless browser: {', '.join(missing)} missing; `make setup` installs them"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def page_registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The bundled base (symlinked: nothing copied) and a reward model derived from it with an
    end-of-turn head (a meaningful reward)."""
    registry = Registry(tmp_path_factory.mktemp("pages-registry"))
    base = registry.path_of(MODEL)
    base.mkdir(parents=True)
    for path in default_model.iterdir():
        (base / path.name).symlink_to(path)
    staging = Registry(tmp_path_factory.mktemp("pages-staging"))
    init_reward_model(registry, MODEL, RM, seed=0, out=staging)
    end_of_turn_head(staging.path_of(RM), default_model)
    manifest = Manifest(
        name=RM,
        kind="rm",
        base_model=MODEL,
        parent=MODEL,
        hyperparameters={"init": "score head = the base's end-of-turn logit row"},
    )
    with registry.write(manifest) as out:
        for path in staging.path_of(RM).iterdir():
            if path.name != "manifest.json":
                (out / path.name).write_bytes(path.read_bytes())
    return registry


@pytest.fixture(scope="module")
def page_server(page_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_bonserve(
        tmp_path_factory.mktemp("pages"),
        "--registry",
        str(page_registry.root),
        "--model",
        MODEL,
        "--alias",
        "policy",
        "--reward-model",
        RM,
        "--default-best-of",
        "2",
        "--admin-key",
        ADMIN_KEY,
        "--accelerator-price-per-hour",
        "2.5",
        "--sse-keepalive-s",  # keep-alives in every streamed Best-of-N request vllm bench sends
        "0.2",
        "--enforce-eager",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1320,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


# --------------------------------------------------------------------------- helpers


def problems(driver: Any, base_url: str) -> list[str]:
    """Failed or off-server requests and browser errors since the last call (the logs are
    drained as they are read)."""
    found, urls = [], {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            url = urls[params["requestId"]] = params["request"]["url"]
            # the network: http(s) and websockets (not the browser's own chrome://, data:, blob:)
            if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(base_url):
                found.append(f"request off the server: {url}")
        elif message["method"] == "Network.responseReceived":
            response = params["response"]
            if response["status"] >= 400:
                found.append(f"{response['status']} {response['url']}")
        elif message["method"] == "Network.loadingFailed":
            url = urls.get(params["requestId"], "?")
            if url.startswith(("http:", "https:")):
                found.append(f"failed: {url}: {params.get('errorText')}")
    found += [f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return found


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def fill(driver: Any, field_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, field_id)
    element.clear()
    element.send_keys(value)


def choose(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def open_playground(driver: Any, srv: ServerProcess) -> None:
    driver.get(srv.base_url + "/")  # redirects to /playground
    wait_for(lambda: "served" in driver.find_element("id", "models-status").text, 30, "the model list")


# --------------------------------------------------------------------------- tests


def test_playground_loads_with_no_failed_request(page_server: ServerProcess, browser: Any) -> None:
    open_playground(browser, page_server)
    assert browser.current_url == page_server.base_url + "/playground"
    models = [o.get_attribute("value") for o in css(browser, "#model-a option")]
    assert models == [MODEL, "policy"]
    wait_for(lambda: "vLLM" in browser.find_element("id", "server-version").text, 10, "the version")
    assert problems(browser, page_server.base_url) == []


def test_docs_and_redoc_load_offline_with_an_authorize_button(
    page_server: ServerProcess, browser: Any
) -> None:
    browser.get(page_server.base_url + "/docs")
    wait_for(lambda: css(browser, ".swagger-ui .info .title"), 60, "Swagger UI to render")
    assert "bonserve" in css(browser, ".swagger-ui .info .title")[0].text
    css(browser, "button.authorize")[0].click()
    dialog = wait_for(lambda: css(browser, ".dialog-ux .modal-ux-content"), 10, "the Authorize dialog")
    assert "ApiKey" in dialog[0].text and "AdminKey" in dialog[0].text
    assert len(css(browser, ".opblock")) >= 10  # every route is listed
    assert problems(browser, page_server.base_url) == []

    browser.get(page_server.base_url + "/redoc")
    wait_for(lambda: any("bonserve" in h.text for h in css(browser, "h1")), 60, "ReDoc to render")
    assert css(browser, "[data-section-id]"), "ReDoc rendered no operations"
    assert problems(browser, page_server.base_url) == []


def test_best_of_n_run_shows_every_candidate_and_the_pick(page_server: ServerProcess, browser: Any) -> None:
    open_playground(browser, page_server)
    settings = {"a": (MODEL, "1", "4", "1", "16", "7"), "b": ("policy", "1", "1", "0", "16", "")}
    for side, (model, n, best_of, temperature, max_tokens, seed) in settings.items():
        choose(browser, f"model-{side}", model)
        for field, value in (("n", n), ("best-of", best_of), ("temperature", temperature)):
            fill(browser, f"{field}-{side}", value)
        fill(browser, f"max-tokens-{side}", max_tokens)
        fill(browser, f"seed-{side}", seed)
    css(browser, "#run")[0].click()
    wait_for(lambda: all(css(browser, f"#result-{s}[data-state]") for s in "ab"), 300, "both runs to finish")
    for side in "ab":
        result = css(browser, f"#result-{side}")[0]
        assert result.get_attribute("data-state") == "done", result.text

    cards = css(browser, "#result-a .candidate")
    picked = css(browser, "#result-a .candidate.picked")
    assert len(cards) == 4 and len(picked) == 1
    assert picked[0].get_attribute("data-rank") == "0" and "picked" in picked[0].text
    rewards = [float(c.find_element("css selector", ".reward").text.split()[1]) for c in cards]
    assert rewards == sorted(rewards, reverse=True)
    shown = [c.find_element("css selector", ".text").text for c in cards]

    # the page shows what the API returns for that request (seeded: the same candidates)
    api = seeded_run(page_server)
    assert shown == [c["text"].strip() for c in api["candidates"]]
    assert rewards == pytest.approx([c["reward"] for c in api["candidates"]], abs=1e-3)

    stats = {s.get_attribute("data-stat"): s.text for s in css(browser, "#result-a .stat")}
    assert stats["candidates"].endswith("4") and stats["latency"].endswith("ms")
    assert "$" in stats["estimated_cost_usd"] and float(stats["reward_model_tokens"].split()[-1]) > 0
    # B: the alias, greedy, best_of = n: returned as sampled, nothing ranked
    assert "nothing was ranked" in css(browser, "#result-b")[0].text
    assert len(css(browser, "#result-b .candidate")) == 1
    assert problems(browser, page_server.base_url) == []


def test_admin_registry_lineage_and_promotion(page_server: ServerProcess, browser: Any) -> None:
    """Runs after the Best-of-N run above: the screenshot shows the page after it."""
    if not browser.current_url.endswith("/playground"):
        open_playground(browser, page_server)
    fill(browser, "admin-key", "wrong-key")
    css(browser, "#load-registry")[0].click()
    wait_for(lambda: "401" in browser.find_element("id", "admin-status").text, 10, "the 401")
    problems(browser, page_server.base_url)  # that 401 is expected: drain it

    fill(browser, "admin-key", ADMIN_KEY)
    css(browser, "#load-registry")[0].click()
    row = wait_for(lambda: css(browser, f'#registry-table tr[data-entry="{RM}"]'), 10, "the registry")[0]
    assert f"{MODEL} → {RM}" in row.text  # lineage: its parent, then itself
    assert "policy" in css(browser, f'#registry-table tr[data-entry="{MODEL}"]')[0].text  # served as

    choose(browser, "promote-model", MODEL)
    css(browser, "#promote")[0].click()
    wait_for(lambda: "→" in browser.find_element("id", "promote-status").text, 60, "the promotion")
    assert browser.find_element("id", "promote-status").text.startswith(f"policy → {MODEL}")
    assert problems(browser, page_server.base_url) == []

    if SCREENSHOT:  # the whole page: a viewport as tall as the document
        height = browser.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": 1320, "height": height, "deviceScaleFactor": 1, "mobile": False}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        browser.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        browser.save_screenshot(SCREENSHOT)
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_majority_selector_run_shows_the_selector(page_server: ServerProcess, browser: Any) -> None:
    """bon_selector majority from the playground: the request succeeds, the result says the
    selector that ranked (from the response), and the candidates, which have no reward, show
    their vote shares with valid bars (no NaN)."""
    open_playground(browser, page_server)
    if css(browser, "#compare")[0].is_selected():
        css(browser, "#compare")[0].click()  # run A only
    choose(browser, "model-a", MODEL)
    settings = {"n": "1", "best-of": "4", "temperature": "1", "max-tokens": "16", "seed": "7"}
    for field, value in settings.items():
        fill(browser, f"{field}-a", value)
    choose(browser, "selector-a", "majority")
    css(browser, "#run")[0].click()
    wait_for(lambda: css(browser, "#result-a[data-state]"), 300, "the run to finish")
    result = css(browser, "#result-a")[0]
    assert result.get_attribute("data-state") == "done", result.text
    assert result.get_attribute("data-selector") == "majority"
    stat = css(browser, '#result-a .stat[data-stat="selector"]')[0]
    assert stat.text.split()[-1] == "majority" and stat.get_attribute("data-from") == "response"
    assert "ranked by bon_selector majority" in result.text and "NaN" not in result.text

    cards = css(browser, "#result-a .candidate")
    assert len(cards) == 4 and len(css(browser, "#result-a .candidate.picked")) == 1
    votes = []
    for card in cards:
        assert card.find_element("css selector", ".reward").text == "reward –"
        score = card.find_element("css selector", ".score").text
        assert re.fullmatch(r"votes \d+%", score), score
        votes.append(int(score.split()[1][:-1]))
        (bar,) = card.find_elements("css selector", ".bar > span")
        assert re.fullmatch(r"width: \d+%;", bar.get_attribute("style") or ""), bar.get_attribute("style")
    # each shows its answer's share of the 4 votes; the winning answer's candidates come first
    assert votes == sorted(votes, reverse=True) and set(votes) <= {25, 50, 75, 100}
    shown = [c.find_element("css selector", ".text").text for c in cards]
    stats = {s.get_attribute("data-stat"): s.text for s in css(browser, "#result-a .stat")}
    assert stats["reward_model_tokens"].split()[-1] == "0"  # majority scores nothing

    api = seeded_run(page_server, bon_selector="majority")
    assert api["usage"]["bonserve"]["selector"] == "majority"
    assert all(c["reward"] is None for c in api["candidates"])
    assert shown == [c["text"].strip() for c in api["candidates"]]
    assert problems(browser, page_server.base_url) == []


def seeded_run(srv: ServerProcess, **extra: object) -> dict[str, Any]:
    """Through the API, the request the page's run A sends (seeded: the same candidates)."""
    body = {"model": MODEL, "messages": MESSAGES, "n": 1, "best_of": 4, "temperature": 1}
    body |= {"max_tokens": 16, "seed": 7, "return_candidates": True, **extra}
    result: dict[str, Any] = httpx.post(srv.v1 + "/chat/completions", json=body, timeout=120).json()
    return result


def requests_by_mode(srv: ServerProcess) -> dict[str, float]:
    """bonserve_requests_total summed per mode ("bon", "single")."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(srv.base_url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "bonserve_requests_total":
                mode = sample.labels.get("mode", "")
                counts[mode] = counts.get(mode, 0) + sample.value
    return counts


def test_vllm_bench_serve_runs_unchanged(
    page_server: ServerProcess, default_model: Path, tmp_path: Path
) -> None:
    """vLLM's bench as it is: the random dataset sends ignore_eos, streams chat, and checks
    its tokenizer against /tokenize. The server's default best_of (2) makes every request a
    Best-of-N one; --extra-body best_of=1 makes them plain n=1."""
    for name, extra, mode, candidates in (
        ("default", [], "bon", 2),
        ("single", ["--extra-body", '{"best_of": 1}'], "single", 1),
    ):
        before = requests_by_mode(page_server)
        run = run_bench(
            bench_args(page_server.base_url, MODEL, default_model, tmp_path, f"{name}.json", extra=extra),
            timeout_s=400,
        )
        assert (run.completed, run.failed) == (4, 0), run.result.get("errors")
        assert "/tokenize unavailable" not in run.output and "Traceback" not in run.output
        # ignore_eos: every candidate decodes all 8 tokens; completion_tokens bills every candidate
        assert run.result["total_output_tokens"] == 4 * 8 * candidates, name
        after = requests_by_mode(page_server)
        other = "single" if mode == "bon" else "bon"
        assert after.get(mode, 0) - before.get(mode, 0) >= 4, (name, before, after)
        assert after.get(other, 0) == before.get(other, 0), (name, before, after)
