"""Regenerate the vendored JSON schemas of the CRD kinds bonserve renders (k8s/validate.sh
validates every rendered ScaledObject, ServiceMonitor and PrometheusRule against them):

    python3 k8s/schemas/generate.py        # needs PyPI; rewrites k8s/schemas/<group>/*.json

Where they come from: no KEDA or Prometheus-operator CRD is published as a file on PyPI, npm
or Debian. The PyPI packages below are pydantic models that cloudcoil's code generator builds
from those projects' CRDs (openAPIV3Schema: field names, types, required fields, patterns,
bounds, int-or-string); pydantic turns them back into JSON Schema. Pinned, so the schemas only
change when these pins do:

    cloudcoil-models-keda==2.16.1.0                 KEDA v2.16.1 (keda.sh/v1alpha1)
    cloudcoil-models-prometheus-operator==0.80.1.0  prometheus-operator v0.80.1 (monitoring.coreos.com/v1)

(newer releases of both require Python >= 3.14). Then made strict the way kubeconform's
openapi2jsonschema does with strict mode: every object with declared properties gets
`additionalProperties: false` (unless it already allows extra fields), so a misspelled or
misplaced field fails validation, as the API server's strict field validation would reject it.
What the generated models lose from the CRDs: enums (KEDA's metricType) and descriptions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

PINS = ["cloudcoil-models-keda==2.16.1.0", "cloudcoil-models-prometheus-operator==0.80.1.0"]
# (module, class, group, version): written to <group>/<kind>_<version>.json (kubeconform's layout)
KINDS = [
    ("cloudcoil.models.keda.v1alpha1", "ScaledObject", "keda.sh", "v1alpha1"),
    ("cloudcoil.models.prometheus_operator.v1", "ServiceMonitor", "monitoring.coreos.com", "v1"),
    ("cloudcoil.models.prometheus_operator.v1", "PrometheusRule", "monitoring.coreos.com", "v1"),
]
HERE = Path(__file__).resolve().parent


def strict(node: Any) -> Any:
    """Drop titles/defaults; forbid undeclared properties on every object that declares some."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k not in ("title", "default", "description")}
    if isinstance(node.get("properties"), dict):  # field names are data, not annotations
        out["properties"] = {k: strict(v) for k, v in node["properties"].items()}
    if out.get("type") == "object" and out.get("properties") and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def generate() -> None:
    import importlib

    for module, name, group, version in KINDS:
        model = getattr(importlib.import_module(module), name)
        schema = strict(model.model_json_schema(by_alias=True))
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"{group}/{version} {name}: made by k8s/schemas/generate.py from {', '.join(PINS)}",
            **schema,
        }
        out = HERE / group / f"{name.lower()}_{version}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {out.relative_to(HERE.parent.parent)}")


def main() -> None:
    if "--inner" in sys.argv:
        generate()
        return
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        py = str(Path(tmp) / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "--quiet", *PINS], check=True)
        subprocess.run([py, __file__, "--inner"], check=True)


if __name__ == "__main__":
    main()
