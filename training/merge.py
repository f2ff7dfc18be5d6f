"""Merge a LoRA registry entry into a full-weight entry with the same lineage.

    bonserve registry merge arith-ppo                    # writes arith-ppo-merged
    bonserve registry merge arith-ppo --name policy-v2   # any other name

Why: vLLM's CPU backend runs LoRA through plain-torch punica ops, so a served adapter decodes
several times slower than its base (measured on this project's 2-core box: 69 tok/s without
the adapter vs 17 tok/s with a rank-16 one on the same engine). The merged checkpoint has the
base's architecture, so it decodes at the base's speed; what it gives up is the cheap swap
(promoting it starts a new engine instead of loading an adapter in milliseconds) and sharing
one engine between many adapters.

The merged entry keeps the adapter's kind (sft/dpo/ppo/...), base model, data hash,
hyper-parameters and metrics; its parent is the LoRA entry, and `extra["merged_from"]`
records the adapter files' checksums, so the lineage can be verified later.
"""

from __future__ import annotations

from core.lora import full_weights_of
from core.registry import Entry, Manifest, Registry, RegistryError, check_name


def merged_name(name: str) -> str:
    return check_name(f"{name}-merged")


def merge_entry(
    registry: Registry, name: str, *, out_name: str | None = None, overwrite: bool = False
) -> Entry:
    """Write `out_name` (default NAME-merged): the LoRA entry `name` merged into its base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = registry.load(name, deep=True)
    if entry.manifest.format != "lora":
        raise RegistryError(f"{name!r} is format {entry.manifest.format!r}: only LoRA entries can be merged")
    if entry.manifest.kind == "rm":
        raise RegistryError(f"{name!r} is a reward model: reward models are saved merged already")
    target = check_name(out_name or merged_name(name))
    if (registry.root / target).exists() and not overwrite:
        raise RegistryError(f"entry {target!r} already exists: pass --overwrite to replace it, or --name")
    root = full_weights_of(registry, entry)
    model = AutoModelForCausalLM.from_pretrained(root.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, entry.path).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(entry.path)
    source = entry.manifest
    manifest = Manifest(
        name=target,
        kind=source.kind,
        format="full",
        base_model=source.base_model,
        parent=entry.name,
        data_hash=source.data_hash,
        hyperparameters=source.hyperparameters,
        metrics=source.metrics,
        extra={**source.extra, "merged_from": {"name": entry.name, "files": source.files}},
    )
    with registry.write(manifest) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return registry.load(target, deep=True)
