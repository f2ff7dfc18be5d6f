"""The Kubernetes manifests must tell the truth about bonserve: every setting, flag, route and
port they name exists, and the security and storage invariants docs/deploy.md promises hold.

    .venv/bin/pytest tests/k8s -q

Rendering: tests/k8s/conftest.py. Training Jobs: test_jobs.py; images and locks:
test_images.py; autoscaling, alerts, dashboard and CRD schemas: test_monitoring.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bonserve.cli import make_parser, settings_from_args
from core.desired_state import state_path
from core.registry import bonserve_home
from server.config import Settings
from server.routes import openai_router, ops_router
from tests.k8s.manifests import (
    JOBS,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    UID,
    Rendered,
    all_containers,
    argv_of,
    bonserve_argv,
    deployment_spec,
    literal_env,
    one,
    parse_or_fail,
    pod_specs,
    quantity,
    resolve_port,
    server_container,
)
from training.train_config import TrainConfig

# Settings read outside server.config: BONSERVE_HOME is core/registry.py's store root.
NON_SETTINGS_ENV = {"BONSERVE_HOME"}
# Where the root filesystem is read-only, these must point into writable volumes.
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
# Compile caches: on the model volume (kept across pod restarts), never on an emptyDir.
COMPILE_CACHE_ENV = (
    "VLLM_CACHE_ROOT",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "CUDA_CACHE_PATH",
    "FLASHINFER_WORKSPACE_BASE",
)
# What a container writes besides its emptyDirs (writable layer, logs): kept free in its limit.
EPHEMERAL_HEADROOM = 1 << 30


def route_paths() -> set[str]:
    return {r.path for r in [*ops_router.routes, *openai_router.routes]}


# --------------------------------------------------------------------------- shape


def test_overlays_render_the_expected_resources(rendered: Rendered) -> None:
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
                "NetworkPolicy",
                "ScaledObject",
                "ServiceMonitor",
                "PrometheusRule",
                "ConfigMap",
            ]
        ), name
    for name in JOBS:
        # Only the Job: the run's parameters are local to kustomize, and the training
        # NetworkPolicy comes with the overlays, so `kubectl create` never hits AlreadyExists.
        assert [d["kind"] for d in rendered[name]] == ["Job"], name
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


def test_every_bonserve_env_var_is_a_real_setting(rendered: Rendered) -> None:
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


def test_env_references_are_defined_before_use(rendered: Rendered) -> None:
    """Kubernetes expands $(VAR) only from variables defined earlier in the container's env
    list (anything else stays literal): kustomize patches can reorder the list."""
    for where, spec in pod_specs(rendered):
        for c in all_containers(spec):
            seen: set[str] = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert ref in seen, f"{where} {c['name']}: {e['name']} uses $({ref}) before it is set"
                seen.add(e["name"])
            for arg in [*c.get("command", []), *c.get("args", [])]:
                for ref in re.findall(r"\$\((\w+)\)", arg):
                    assert ref in seen, f"{where} {c['name']}: the command uses undefined $({ref})"


def test_bonserve_home_is_where_the_registry_lives(
    monkeypatch: pytest.MonkeyPatch, rendered: Rendered
) -> None:
    """BONSERVE_HOME is no Settings field: check the module that reads it honours it, and that
    the server's registry is the one `models prepare` and training write ($BONSERVE_HOME/registry)."""
    monkeypatch.setenv("BONSERVE_HOME", "/data")
    assert bonserve_home() == Path("/data")
    for name in OVERLAYS:
        env = literal_env(server_container(rendered[name]))
        assert Path(env["BONSERVE_REGISTRY"]) == Path(env["BONSERVE_HOME"]) / "registry"


def server_settings(overlay: str, monkeypatch: pytest.MonkeyPatch, rendered: Rendered) -> Settings:
    """`bonserve serve` with the container's flags and literal BONSERVE_* env."""
    for key in [k for k in os.environ if k.startswith("BONSERVE_")]:
        monkeypatch.delenv(key)
    container = server_container(rendered[overlay])
    for key, value in literal_env(container).items():
        if key.startswith("BONSERVE_"):
            monkeypatch.setenv(key, value)
    argv = argv_of(container)
    assert argv[:2] == ["bonserve", "serve"]
    return settings_from_args(parse_or_fail(argv))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_command_and_env_make_valid_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch, rendered: Rendered
) -> None:
    container = server_container(rendered[overlay])
    settings = server_settings(overlay, monkeypatch, rendered)
    assert settings.host == "0.0.0.0"
    assert settings.port == resolve_port(container, "http")
    assert settings.reward_model, "the reward engine must be co-located (BONSERVE_REWARD_MODEL)"
    assert not settings.enforce_eager


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_pods_have_lora_slots(
    overlay: str, monkeypatch: pytest.MonkeyPatch, rendered: Rendered
) -> None:
    """The trainers write LoRA entries by default: every serving Deployment must be able to
    load one at run time (BONSERVE_MAX_LORAS > 0), at the rank they write, or a promotion of
    one is refused (lora_disabled) and the pods stay out of sync with the registry."""
    servers = [
        (d["metadata"]["name"], c)
        for d in rendered[overlay]
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if argv_of(c)[:2] == ["bonserve", "serve"]
    ]
    assert servers, f"{overlay}: no serving Deployment"
    for name, c in servers:
        assert int(literal_env(c).get("BONSERVE_MAX_LORAS", "0")) > 0, f"{overlay}: {name}"
    settings = server_settings(overlay, monkeypatch, rendered)
    assert settings.max_loras >= 2, "the promoted adapter and the one it replaces, both resident"
    assert settings.max_lora_rank >= TrainConfig.__dataclass_fields__["lora_r"].default


def test_init_containers_run_real_commands(rendered: Rendered) -> None:
    for name in OVERLAYS:
        spec = deployment_spec(rendered[name])
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
        assert script.startswith("set -e;"), "a failed mkdir must fail the initContainer"


# --------------------------------------------------------------------------- routes and ports


def test_probe_paths_are_real_routes(rendered: Rendered) -> None:
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


def test_ports_agree(rendered: Rendered) -> None:
    for name in OVERLAYS:
        docs = rendered[name]
        container = server_container(docs)
        container_port = resolve_port(container, "http")
        (svc_port,) = one(docs, "Service")["spec"]["ports"]
        assert resolve_port(container, svc_port["targetPort"]) == container_port
        (rule,) = one(docs, "NetworkPolicy", "bonserve")["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [container_port]
        (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
        assert endpoint["port"] == svc_port["name"]
        assert endpoint["path"] in route_paths()


def test_selectors_select_the_server_pods(rendered: Rendered) -> None:
    for name in OVERLAYS:
        docs = rendered[name]
        deployment = one(docs, "Deployment")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selectors = {
            "Deployment": deployment["spec"]["selector"]["matchLabels"],
            "Service": one(docs, "Service")["spec"]["selector"],
            "PodDisruptionBudget": one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            "NetworkPolicy": one(docs, "NetworkPolicy", "bonserve")["spec"]["podSelector"]["matchLabels"],
        }
        for kind, selector in selectors.items():
            assert selector and selector.items() <= pod_labels.items(), f"{name} {kind}"
        service_labels = one(docs, "Service")["metadata"]["labels"]
        monitor = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
        assert monitor.items() <= service_labels.items()
        # Ingress peers are exactly the opt-in label (kustomize must not have added its own).
        (rule,) = one(docs, "NetworkPolicy", "bonserve")["spec"]["ingress"]
        for peer in rule["from"]:
            (selector,) = peer.values()
            assert selector["matchLabels"] == {"bonserve/access": "true"}


def test_training_policy_selects_the_job_pods_and_denies_everything(rendered: Rendered) -> None:
    for name in OVERLAYS:
        policy = one(rendered[name], "NetworkPolicy", "bonserve-training")["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        assert policy["ingress"] == policy["egress"] == []
        for job in JOBS:
            labels = one(rendered[job], "Job")["spec"]["template"]["metadata"]["labels"]
            assert policy["podSelector"]["matchLabels"].items() <= labels.items(), job


def test_rollout_never_drops_below_serving_capacity(rendered: Rendered) -> None:
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


def test_security_context_invariants(rendered: Rendered) -> None:
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
    assert seen == 3 * len(OVERLAYS) + len(JOBS)  # 2 initContainers + the server; one per Job


def test_keys_come_from_a_secret(rendered: Rendered) -> None:
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


def test_checkov_skips_carry_reasons(rendered: Rendered) -> None:
    for name, docs in rendered.items():
        for d in docs:
            for key, value in (d["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    # checkov splits on "=": exactly one, then a real sentence.
                    assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+=[^=]{40,}", value), (name, key, value)


# --------------------------------------------------------------------------- storage


def writable_mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mountPath -> kind ("emptyDir" or "pvc") of the container's writable, non-memory mounts."""
    kinds = {
        v["name"]: "pvc" if "persistentVolumeClaim" in v else "emptyDir"
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v or ("emptyDir" in v and v["emptyDir"].get("medium") != "Memory")
    }
    return {
        m["mountPath"]: kinds[m["name"]]
        for m in container["volumeMounts"]
        if m["name"] in kinds and not m.get("readOnly")
    }


def test_writable_paths_are_on_volumes(rendered: Rendered) -> None:
    """With a read-only root, every cache directory must lie on a writable volume, and the
    compile caches on the model volume, so that a restarted pod does not compile again."""
    for where, spec in pod_specs(rendered):
        memory = {v["name"] for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
        for c in all_containers(spec):
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            writable = writable_mounts(spec, c)
            env = literal_env(c)
            label = f"{where} {c['name']}"
            if c["name"] in ("bonserve", "train"):
                assert set(CACHE_ENV) <= env.keys(), f"{label}: missing cache env"
                assert mounts["/dev/shm"]["name"] in memory, label
                for key in (k for k in COMPILE_CACHE_ENV if k in env):
                    (on,) = [kind for p, kind in writable.items() if Path(env[key]).is_relative_to(p)]
                    assert on == "pvc", f"{label}: {key}={env[key]} is lost on restart"
                    # Compiled kernels are hardware-specific: one directory per node.
                    assert "/$(NODE_NAME)/" in env[key], f"{label}: {key} is shared across nodes"
            assert writable.get("/tmp") == "emptyDir", label
            for key in (k for k in CACHE_ENV if k in env):
                assert any(Path(env[key]).is_relative_to(p) for p in writable), (
                    f"{label}: {key}={env[key]} is not on a writable volume"
                )


def test_registry_volume_is_read_only_for_the_server(rendered: Rendered) -> None:
    """The server reads the registry; only its compile-cache subPath and the promotions record
    (registry/_state, core/desired_state.py) are writable (created by an initContainer, as UID
    10001, before the server's mounts need them)."""
    for name in OVERLAYS:
        spec = deployment_spec(rendered[name])
        (claim,) = [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        for c in all_containers(spec):
            mounts = [m for m in c["volumeMounts"] if m["name"] == claim]
            data = [m for m in mounts if m["mountPath"] == "/data"]
            assert len(data) == 1 and "subPath" not in data[0], c["name"]
            assert bool(data[0].get("readOnly")) == (c["name"] == "bonserve"), c["name"]
            others = [m for m in mounts if m["mountPath"] != "/data"]
            if c["name"] == "bonserve":
                writable = sorted((m["mountPath"], m.get("subPath"), bool(m.get("readOnly"))) for m in others)
                assert writable == [
                    ("/cache", "cache", False),
                    ("/data/registry/_state", "registry/_state", False),
                ]
            else:
                assert others == [], c["name"]
        creates = " ".join(argv_of(spec["initContainers"][1])[2:])
        assert "mkdir -p /data/cache /data/registry/_state" in creates
        # The writable directory is where the server records promotions.
        env = literal_env(server_container(rendered[name]))
        assert state_path(env["BONSERVE_REGISTRY"]).parent == Path("/data/registry/_state")


def test_ephemeral_storage_limits_cover_empty_dirs(rendered: Rendered) -> None:
    """The kubelet evicts a pod whose disk emptyDirs + writable layers + logs exceed the sum of
    its containers' ephemeral-storage limits. So that each emptyDir's own sizeLimit is what
    applies, the limits must hold every disk emptyDir at its sizeLimit plus headroom for the
    containers' own writes; memory-backed emptyDirs count against memory instead."""
    for where, spec in pod_specs(rendered):
        disk = [v["emptyDir"] for v in spec["volumes"] if "emptyDir" in v]
        assert all("sizeLimit" in e for e in disk), f"{where}: an emptyDir without sizeLimit"
        on_disk = sum(quantity(e["sizeLimit"]) for e in disk if e.get("medium") != "Memory")
        limits = [quantity(c["resources"]["limits"]["ephemeral-storage"]) for c in spec["containers"]]
        assert sum(limits) >= on_disk + EPHEMERAL_HEADROOM * len(limits), (
            f"{where}: ephemeral-storage limits {sum(limits) >> 30}Gi"
            f" < emptyDirs {on_disk >> 30}Gi + headroom"
        )
        for c in all_containers(spec):
            res = c["resources"]
            request, limit = (quantity(res[k]["ephemeral-storage"]) for k in ("requests", "limits"))
            assert EPHEMERAL_HEADROOM <= request <= limit, f"{where} {c['name']}"
        memory = sum(quantity(e["sizeLimit"]) for e in disk if e.get("medium") == "Memory")
        assert memory < sum(quantity(c["resources"]["limits"]["memory"]) for c in spec["containers"]), where


# --------------------------------------------------------------------------- overlays


# Besides its KV cache, what one engine of the 135M default holds on a GPU (weights, activations,
# CUDA graphs, CUDA context), rounded up.
ENGINE_OVERHEAD_GIB = 2.0


def gpu_memory_gib(rendered: Rendered) -> float:
    """The smallest GPU (GiB) the GPU overlay's node affinity admits."""
    spec = deployment_spec(rendered["gpu"])
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    (memory,) = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
    assert memory["operator"] == "Gt"
    return int(memory["values"][0]) / 1024  # the label is in MiB


def test_gpu_overlay_asks_for_one_gpu(rendered: Rendered) -> None:
    spec = deployment_spec(rendered["gpu"])
    resources = server_container(rendered["gpu"])["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    # GPUs large enough for every engine start (see deployment-gpu.yaml and the next test).
    assert gpu_memory_gib(rendered) >= 16
    cpu_resources = server_container(rendered["cpu"])["resources"]
    assert "nvidia.com/gpu" not in {**cpu_resources["requests"], **cpu_resources["limits"]}


def test_gpu_overlay_engine_settings(monkeypatch: pytest.MonkeyPatch, rendered: Rendered) -> None:
    gpu = server_settings("gpu", monkeypatch, rendered)
    assert gpu.dtype == "bfloat16"
    assert gpu.enable_chunked_prefill
    assert not gpu.enforce_eager
    # vLLM starts an engine only while gpu_memory_utilization x total is free. Every start a pod
    # makes must pass on the smallest GPU the affinity admits: the policy on an empty GPU, the
    # reward engine beside it, and a swap engine (full promotion, reward swap) beside both.
    total = gpu_memory_gib(rendered)
    policy_util, reward_util = gpu.gpu_memory_utilization, gpu.reward_gpu_memory_utilization
    assert policy_util is not None and reward_util is not None, "set both start gates"
    reward_kv = gpu.reward_kv_cache_gib or gpu.kv_cache_gib
    assert reward_kv < gpu.kv_cache_gib, "the scorer needs less KV cache than the policy"
    policy, reward = gpu.kv_cache_gib + ENGINE_OVERHEAD_GIB, reward_kv + ENGINE_OVERHEAD_GIB
    assert total - policy >= reward_util * total, "the reward engine could not start"
    assert total - policy - reward >= max(policy_util, reward_util) * total, "no room for a swap"
    assert policy + reward + policy <= total
    # A best_of=16 request is 16 sequences: admitted requests x 16 fit in one batch.
    assert gpu.max_num_seqs is not None and gpu.max_num_seqs >= gpu.max_concurrent_requests * 16
    assert "fieldRef" in str(server_container(rendered["gpu"])["env"])  # NODE_NAME from the pod


def test_cpu_overlay_sizes(rendered: Rendered) -> None:
    container = server_container(rendered["cpu"])
    resources = container["resources"]
    # Guaranteed QoS (cpu and memory requests == limits) with whole CPUs: exclusive cores
    # under the kubelet's static CPU manager.
    for kind in ("cpu", "memory"):
        assert resources["requests"][kind] == resources["limits"][kind], kind
    cpus = int(resources["limits"]["cpu"])
    env = literal_env(container)
    assert int(env["OMP_NUM_THREADS"]) < cpus, "leave a core to the HTTP server and reward engine"
    # Compile mode is left to the server's by-device default (eager on CPU), not pinned here.
    assert "--enforce-eager" not in container["args"] and "--no-enforce-eager" not in container["args"]
    assert "BONSERVE_ENFORCE_EAGER" not in env
    # The CPU defaults stay: float32 (bfloat16 changes SmolLM2's greedy answers on CPU) and no
    # chunked prefill (a seeded chunked prefill kills vLLM 0.32's CPU engine core).
    assert "BONSERVE_DTYPE" not in env and "BONSERVE_ENABLE_CHUNKED_PREFILL" not in env
