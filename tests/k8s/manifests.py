"""Helpers shared by the tests of k8s/, the Dockerfiles and the image locks: rendering is done
once per session by the `rendered` fixture (conftest.py), these read what it returns."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bonserve.cli import make_parser

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")
# k8s/jobs/<stage>, in the order they run; rendered as jobs-<stage>.
JOB_STAGES = ("prefs", "rm", "dpo", "ppo")
JOBS = tuple(f"jobs-{stage}" for stage in JOB_STAGES)
UID = 10001
NAMESPACE = "bonserve"

Docs = list[dict[str, Any]]
Rendered = dict[str, Docs]


def one(docs: Docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] in ("Deployment", "Job"):
                yield f"{name}:{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def deployment_spec(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def server_container(docs: Docs) -> dict[str, Any]:
    (c,) = [c for c in deployment_spec(docs)["containers"] if c["name"] == "bonserve"]
    return c


def job_container(docs: Docs) -> dict[str, Any]:
    (c,) = one(docs, "Job")["spec"]["template"]["spec"]["containers"]
    return c


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command, args and env values (undefined ones stay)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def dockerfile_instruction(path: Path, name: str) -> str:
    """The last `NAME ...` instruction of a Dockerfile (continuation lines joined)."""
    values = dockerfile_instructions(path, name)
    assert values, f"{path.name} has no {name}"
    return values[-1]


def dockerfile_instructions(path: Path, name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [
        line.split(None, 1)[1].strip() for line in text.splitlines() if line.upper().startswith(name + " ")
    ]


def argv_of(container: dict[str, Any]) -> list[str]:
    """The command line a container runs: `command` or the image ENTRYPOINT, then `args`, with
    $(VAR) expanded from the container's literal env as the kubelet does."""
    entrypoint = json.loads(dockerfile_instruction(ROOT / "Dockerfile.cpu", "ENTRYPOINT"))
    env = literal_env(container)
    return [expand(a, env) for a in [*container.get("command", entrypoint), *container.get("args", [])]]


def bonserve_argv(container: dict[str, Any]) -> list[str]:
    """The `bonserve ...` command line, also when wrapped in `sh -c '... || exec bonserve ...'`."""
    argv = argv_of(container)
    if argv[:2] == ["/bin/sh", "-c"]:
        script = " ".join(argv[2:])
        assert "exec bonserve " in script, f"{container['name']}: no `exec bonserve` in {script!r}"
        argv = shlex.split(script.split("exec ", 1)[1])
    assert argv[0] == "bonserve", f"{container['name']} does not run bonserve: {argv}"
    assert not any("$(" in a for a in argv), f"unexpanded variable in {argv}"
    return argv


def parse_or_fail(argv: list[str]) -> Any:
    try:
        return make_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is not a valid bonserve command line (see stderr)")


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(value: str | int) -> int:
    """Bytes of a Kubernetes quantity such as 8Gi or 500M."""
    m = re.fullmatch(r"(\d+)([KMGT]i|[kMG])?", str(value))
    assert m, f"unsupported quantity {value!r}"
    return int(m.group(1)) * _UNITS[m.group(2) or ""]
