"""Autoscaling, alerts, dashboard and the CRD schemas: every series a query names is one that
bonserve (server/metrics.py) or the installed vLLM exports, or one of the named external
sources; the KEDA formula uses its triggers; every alert has a promtool unit test, and they
pass (where promtool is installed); the rendered custom resources validate against the
vendored strict schemas (k8s/schemas)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY

import server.metrics  # noqa: F401  (registers bonserve's collectors)
from tests.k8s.manifests import (
    NAMESPACE,
    OVERLAYS,
    ROOT,
    Rendered,
    literal_env,
    one,
    server_container,
)

MONITORING = ROOT / "k8s" / "components" / "monitoring"
# Series from outside bonserve and vLLM, by the component that exports them.
EXTERNAL = {
    "up": "Prometheus (per scrape target)",
    "kube_pod_status_ready": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
}
# Labels the ServiceMonitor's scrape adds to every bonserve series.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint"}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def bonserve_series() -> dict[str, set[str]]:
    """Every series name bonserve's registry can expose, with its label names."""
    out: dict[str, set[str]] = {}
    for collector, names in list(REGISTRY._collector_to_names.items()):
        labels = set(getattr(collector, "_labelnames", ()))
        for name in names:
            if name.startswith("bonserve_"):
                out[name] = labels
    return out


def vllm_series() -> dict[str, set[str]]:
    """Series of vLLM's Prometheus logger (the installed version), as exposed: counters get
    _total, histograms _bucket/_sum/_count; each is labelled by model_name and engine."""
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations, "vllm is not installed"
    source = (Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py").read_text()
    suffixes = {"gauge": [""], "counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    out: dict[str, set[str]] = {}
    for kind, name in re.findall(r"self\._(gauge|counter|histogram)_cls\(\s*name=\"(vllm:[\w:]+)\"", source):
        for suffix in suffixes[kind]:
            out[name + suffix] = {"model_name", "engine"}
    assert "vllm:num_requests_waiting" in out and "vllm:kv_cache_usage_perc" in out, "parser out of date?"
    return out


EXPORTED = {**bonserve_series(), **vllm_series()}


def series_in(expr: str) -> dict[str, set[str]]:
    """The metric names a PromQL expression reads, each with the label names it matches on."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    found: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        found.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for name in re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", bare):
        if name not in KEYWORDS and not re.fullmatch(r"\d+\w*", name):
            found.setdefault(name, set())
    return found


def check_exported(where: str, expr: str) -> None:
    used = series_in(expr)
    assert used, f"{where}: no series in {expr!r}"
    for name, labels in used.items():
        if name in EXTERNAL:
            continue
        assert name in EXPORTED, f"{where}: {name} is exported by neither bonserve nor vLLM"
        unknown = labels - EXPORTED[name] - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)}"


def alert_rules() -> list[dict[str, Any]]:
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    return [r for g in spec["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return data


# --------------------------------------------------------------------------- the series parser


def test_series_parser() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, model) (rate(x_bucket{a="b",c=~"$d"}[5m]))) > 5 or on() up'
    assert series_in(expr) == {"x_bucket": {"a", "c"}, "up": set()}
    with pytest.raises(AssertionError, match="neither"):
        check_exported("t", "sum(vllm:no_such_metric)")
    with pytest.raises(AssertionError, match="no label"):
        check_exported("t", 'sum(bonserve_requests_waiting{model="x"})')


# --------------------------------------------------------------------------- alerts


def test_alert_series_are_exported() -> None:
    for rule in alert_rules():
        check_exported(rule["alert"], rule["expr"])


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    fired = {t["alertname"] for g in tests for t in g["alert_rule_test"] if t["exp_alerts"]}
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    assert set(names) <= fired, f"alerts never tested firing: {sorted(set(names) - fired)}"


def test_alert_unit_tests_pass(tmp_path: Path) -> None:
    """`promtool test rules` on alerts.test.yaml, as k8s/validate.sh runs it (the rules file
    is the PrometheusRule's spec). promtool is Debian's `prometheus` package: skipped where it
    is missing, except under CI."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool not found (Debian package prometheus; k8s/validate.sh installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    (tmp_path / "alerts.rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(MONITORING / "alerts.test.yaml", tmp_path)
    for args in (["check", "rules", "alerts.rules.yaml"], ["test", "rules", "alerts.test.yaml"]):
        proc = subprocess.run(
            [promtool, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def test_desired_state_alert_ignores_pods_still_starting() -> None:
    """The in-sync gauge is 0 until a pod's first reconcile, after its engines start: the alert
    must only look at ready pods, and must not fire before a promotion could have converged."""
    (rule,) = [r for r in alert_rules() if r["alert"] == "BonserveDesiredStateOutOfSync"]
    used = series_in(rule["expr"])
    assert set(used) == {"bonserve_desired_state_in_sync", "kube_pod_status_ready"}
    assert "and on (namespace, pod)" in rule["expr"]
    assert re.fullmatch(r"\d+m", rule["for"]) and int(rule["for"][:-1]) >= 5


def test_rerank_forced_alert_reads_the_gate_gauges() -> None:
    """Forced pairings (#16): per (policy, reward model) across pods, valued by the recorded gap
    captured, and held long enough that a promotion being corrected does not page."""
    (rule,) = [r for r in alert_rules() if r["alert"] == "BonserveRerankForced"]
    used = series_in(rule["expr"])
    assert set(used) == {"bonserve_rerank_forced", "bonserve_rerank_gap_captured"}
    assert "pod" not in rule["expr"] and "and on (namespace, policy, reward_model)" in rule["expr"]
    assert rule["expr"].rstrip().endswith("== 1")
    assert re.fullmatch(r"\d+m", rule["for"]) and int(rule["for"][:-1]) >= 5
    assert rule["labels"]["severity"] == "warning"
    text = rule["annotations"]["description"]
    for fix in ("bonserve eval --record", "majority", "logprob", "reward model"):
        assert fix in text, fix


def test_the_issue_list_of_alerts_is_covered() -> None:
    """KV-cache saturation, preemptions, scrape down/absent, 429 rate, pods stuck NotReady,
    pods not converged to the registry's desired state (#20), forced reranking (#16)."""
    exprs = " ".join(r["expr"] for r in alert_rules())
    for needle in (
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "up{",
        "absent(up",
        'status="429"',
        "kube_pod_status_ready",
        "bonserve_desired_state_in_sync",
        "bonserve_rerank_forced",
    ):
        assert needle in exprs, needle
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in alert_rules())


# --------------------------------------------------------------------------- dashboard


def test_dashboard_series_are_exported() -> None:
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            check_exported(f"panel {panel['title']!r}", target["expr"])


def test_dashboard_variables_scope_every_query() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert {"datasource", "namespace", "pod", "model"} <= variables.keys()
    for name in ("namespace", "pod", "model"):
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["query"]["query"])
        assert m, name
        check_exported(f"variable {name}", m.group(1))
        (metric,) = series_in(m.group(1))
        assert m.group(2) in EXPORTED[metric] | TARGET_LABELS, (name, m.group(2))
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            for name, labels in series_in(target["expr"]).items():
                assert {"namespace", "pod"} <= labels, f"{panel['title']}: {name} ignores $namespace/$pod"
                model_label = "model_name" if name.startswith("vllm:") else "model"
                if model_label in EXPORTED[name]:
                    assert model_label in labels, f"{panel['title']}: {name} ignores $model"


def test_dashboard_has_the_engine_panels() -> None:
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for needle in (
        "vllm:inter_token_latency_seconds_bucket",  # ITL
        "vllm:request_time_per_output_token_seconds_bucket",  # TPOT
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",  # vLLM v1's swap-out: preempt and recompute
        "bonserve_swaps_total",  # model hot-swaps
    ):
        assert needle in exprs, needle
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- autoscaling


def test_autoscaler_formula_weights_both_queues_by_candidates(rendered: Rendered) -> None:
    for name in OVERLAYS:
        docs = rendered[name]
        scaled = one(docs, "ScaledObject")["spec"]
        assert scaled["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
        triggers = {t["name"]: t for t in scaled["triggers"]}
        assert all(t["type"] == "prometheus" for t in triggers.values())
        modifiers = scaled["advanced"]["scalingModifiers"]
        assert modifiers["metricType"] == "AverageValue"
        assert set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"])) == set(triggers)
        assert modifiers["formula"] == "bonserve_waiting * candidates_per_request + vllm_waiting"
        queries = {n: t["metadata"]["query"] for n, t in triggers.items()}
        assert "bonserve_requests_waiting" in series_in(queries["bonserve_waiting"])
        assert {"bonserve_candidates_per_request_sum", "bonserve_candidates_per_request_count"} <= set(
            series_in(queries["candidates_per_request"])
        )
        assert "vllm:num_requests_waiting" in series_in(queries["vllm_waiting"])
        service = one(docs, "Service")["metadata"]["name"]
        for trigger, query in queries.items():
            check_exported(f"{name} trigger {trigger}", query)
            for labels in series_in(query).values():
                assert {"namespace", "service"} <= labels, (name, trigger)
            assert f'namespace="{NAMESPACE}"' in query and f'service="{service}"' in query
            assert query.rstrip().endswith(("or vector(0)", "or vector(1)")), "empty is not an error"
        # Target: one admission batch of candidate decodes waiting per replica.
        env = literal_env(server_container(docs))
        assert int(modifiers["target"]) == int(env["BONSERVE_MAX_CONCURRENT_REQUESTS"]), name
        # The HPA owns the replica count: a fixed one would be re-applied against it.
        assert "replicas" not in one(docs, "Deployment")["spec"]


# --------------------------------------------------------------------------- CRD schemas

SCHEMAS = ROOT / "k8s" / "schemas"


def schema_for(doc: dict[str, Any]) -> Draft202012Validator:
    group, _, version = doc["apiVersion"].rpartition("/")
    path = SCHEMAS / group / f"{doc['kind'].lower()}_{version}.json"
    return Draft202012Validator(json.loads(path.read_text()))


@pytest.mark.parametrize("kind", ["ScaledObject", "ServiceMonitor", "PrometheusRule"])
def test_custom_resources_validate_strictly(kind: str, rendered: Rendered) -> None:
    for name in OVERLAYS:
        doc = one(rendered[name], kind)
        validator = schema_for(doc)
        assert not list(validator.iter_errors(doc)), (name, kind)
        # Strict: a misplaced field fails, at the top of spec and deep inside it.
        bad = copy.deepcopy(doc)
        bad["spec"]["replicaCount"] = 3
        assert list(validator.iter_errors(bad)), (name, kind)
        deep = copy.deepcopy(doc)
        first = next(iter(v for v in deep["spec"].values() if isinstance(v, list)))
        first[0]["colour"] = "red"
        assert list(validator.iter_errors(deep)), (name, kind, "nested")


def test_schemas_say_where_they_come_from() -> None:
    for path in SCHEMAS.glob("*/*.json"):
        comment = json.loads(path.read_text())["$comment"]
        assert "k8s/schemas/generate.py" in comment and "cloudcoil-models-" in comment, path
