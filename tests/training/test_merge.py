"""`bonserve registry merge`: a LoRA entry merged into full weights computes what the adapter
on its base computes (checked with peft's own unmerged forward), keeps its lineage, and
refuses entries that are not adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.flags import ConfigError
from core.lora import check_servable_adapter
from core.registry import Manifest, Registry, RegistryError
from training.merge import merge_entry


def _random_adapter(tiny: Registry, name: str) -> Path:
    """A LoRA entry on `tiny` whose B matrices are random (peft's default init is B = 0,
    which would make the merge a no-op and the test unable to fail)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny.path_of("tiny"), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    manifest = Manifest(
        name=name, kind="dpo", format="lora", base_model="tiny", parent="tiny", metrics={"acc": 0.5}
    )
    with tiny.write(manifest) as staging:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(tiny.path_of("tiny")).save_pretrained(staging)
        check_servable_adapter(staging)
    return tiny.path_of(name)


@pytest.mark.slow
def test_merged_entry_computes_what_the_adapter_computes(tiny: Registry) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = _random_adapter(tiny, "t-lora")
    entry = merge_entry(tiny, "t-lora")
    m = entry.manifest
    assert (entry.name, m.kind, m.format, m.parent, m.base_model) == (
        "t-lora-merged",
        "dpo",
        "full",
        "t-lora",
        "tiny",
    )
    assert m.metrics == {"acc": 0.5}
    assert m.extra["merged_from"]["name"] == "t-lora"
    assert "adapter_model.safetensors" in m.extra["merged_from"]["files"]
    assert not (entry.path / "adapter_config.json").exists()

    ids = torch.tensor([[5, 17, 33, 2, 40, 41]])
    base = AutoModelForCausalLM.from_pretrained(tiny.path_of("tiny"), dtype=torch.float32)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        unmerged = PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
        merged_model = AutoModelForCausalLM.from_pretrained(entry.path, dtype=torch.float32).eval()
        merged = merged_model(input_ids=ids).logits
    assert not torch.allclose(plain, unmerged, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_merge_refuses_full_entries_and_existing_names(tiny: Registry) -> None:
    with pytest.raises(RegistryError, match="only LoRA entries"):
        merge_entry(tiny, "tiny")
    _random_adapter(tiny, "t-lora2")
    merge_entry(tiny, "t-lora2", out_name="t-lora2-full")
    with pytest.raises((RegistryError, ConfigError), match="exists"):
        merge_entry(tiny, "t-lora2", out_name="t-lora2-full")


@pytest.mark.slow
def test_registry_merge_command(tiny: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    from bonserve.cli import main as bonserve

    _random_adapter(tiny, "t-lora3")
    assert bonserve(["registry", "merge", "t-lora3", "--registry", str(tiny.root)]) == 0
    assert tiny.load("t-lora3-merged").manifest.format == "full"
    assert bonserve(["registry", "merge", "t-lora3", "--registry", str(tiny.root)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert bonserve(["registry", "merge", "tiny", "--registry", str(tiny.root)]) == 1
