"""Synthetic registry checkpoints for plumbing tests and benchmarks, made locally from a base
(a test helper: it lives under tests/, outside the installed packages).

`make_lora_entry` builds a peft LoRA adapter with *random* weights (init_lora_weights=False),
so it visibly changes the base's outputs; `make_full_entry` is a full checkpoint with
perturbed weights (a swap to it changes outputs); `copy_full_entry` re-registers the base
weights under a new name. All go through Registry.write, like the trainers' outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.registry import Entry, Manifest, Registry


def make_lora_entry(
    registry: Registry,
    base: Entry,
    name: str,
    *,
    rank: int = 8,
    seed: int = 0,
    modules_to_save: list[str] | None = None,
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        modules_to_save=modules_to_save,
    )
    peft_model = get_peft_model(model, config)
    manifest = Manifest(
        name=name,
        kind="sft",
        format="lora",
        base_model=base.name,
        parent=base.name,
        hyperparameters={"r": rank, "seed": seed},
    )
    with registry.write(manifest) as staging:
        peft_model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base.path).save_pretrained(staging)
    return registry.path_of(name)


def copy_full_entry(registry: Registry, base: Entry, name: str, kind: str = "sft") -> Path:
    manifest = Manifest(name=name, kind=kind, format="full", base_model=base.name, parent=base.name)
    with registry.write(manifest) as staging:
        for rel in base.manifest.files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base.path / rel, staging / rel)
    return registry.path_of(name)


def make_full_entry(
    registry: Registry, base: Entry, name: str, *, seed: int = 0, scale: float = 0.02
) -> Path:
    """A full checkpoint whose weights differ from the base: seeded noise (std `scale`) on
    every attention projection, so a swap to it shows in the outputs, not only in a label."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    with torch.no_grad():
        for module_name, param in model.named_parameters():
            if module_name.endswith(("q_proj.weight", "v_proj.weight")):
                param.add_(torch.randn_like(param) * scale)
    manifest = Manifest(
        name=name, kind="sft", format="full", base_model=base.name, parent=base.name,
        hyperparameters={"noise_seed": seed, "noise_scale": scale},
    )  # fmt: skip
    with registry.write(manifest) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(base.path).save_pretrained(staging)
    return registry.path_of(name)


def corrupt_manifest(registry: Registry, name: str) -> None:
    path = registry.path_of(name) / "manifest.json"
    data = json.loads(path.read_text())
    data["kind"] = "no-such-kind"
    path.write_text(json.dumps(data))


def end_of_turn_head(rm_dir: Path, base_dir: Path) -> None:
    """Replace a reward model's random score head by the base's lm_head row of the
    end-of-turn token: the reward is then how strongly the model expects the conversation to
    end there (a finished answer scores above a cut-off one), not chance."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    end = AutoTokenizer.from_pretrained(base_dir).convert_tokens_to_ids("<|im_end|>")
    base = load_file(base_dir / "model.safetensors")
    row = base.get("lm_head.weight", base["model.embed_tokens.weight"])[end]  # tied embeddings
    weights = load_file(rm_dir / "model.safetensors")
    weights["score.weight"] = row.reshape(1, -1).to(torch.float32).clone()
    save_file(weights, rm_dir / "model.safetensors", metadata={"format": "pt"})
