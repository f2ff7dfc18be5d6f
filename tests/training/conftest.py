"""Fixtures for training tests: a throw-away registry holding the real converted base model,
and a tiny random model for short online-RL runs."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core.registry import Manifest, Registry
from training.tasks import TASKS, Example, Task


def link_entry(src: Path, registry_root: Path) -> Path:
    """Put an existing entry into another registry: hard links (no 540 MB copy) when the
    file system allows, copies otherwise. Entries are never modified in place, so sharing
    the inodes is safe."""
    dst = registry_root / src.name
    dst.mkdir(parents=True)
    for path in src.iterdir():
        try:
            os.link(path, dst / path.name)
        except OSError:
            shutil.copy2(path, dst / path.name)
    return dst


@pytest.fixture
def tmp_registry(default_model: Path, tmp_path: Path) -> Registry:
    """A fresh registry with the default base model in it."""
    root = tmp_path / "registry"
    link_entry(default_model, root)
    return Registry(root)


@pytest.fixture(scope="module")
def module_registry(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The same, shared by a module's tests (entries written by one test feed the next)."""
    root = tmp_path_factory.mktemp("registry")
    link_entry(default_model, root)
    return Registry(root)


# --------------------------------------------------------------------------- a tiny model
# For short online-RL runs (GRPO, RLOO, PPO) whose reward must measurably rise in seconds: a
# 2-layer Llama with random weights and a character-level tokenizer, on a task whose gold reward
# is the fraction of digits in the completion (see tests/training/test_online_rl.py for why).

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class DigitsTask(Task):
    """Test task: any prompt; the gold reward is the fraction of digit characters."""

    name = "digits"
    sizes: ClassVar[dict[str, int]] = {"train": 200, "heldout": 20}
    seeds: ClassVar[dict[str, int]] = {"train": 1, "heldout": 2}

    def sample(self, rng: random.Random) -> tuple[Any, str, dict[str, Any]]:
        i = rng.randint(0, 10**6)
        return i, f"Say {i}.", {"i": i}

    def reward(self, example: Example, completion: str) -> float:
        return sum(c.isdigit() for c in completion) / max(len(completion), 1)


@pytest.fixture
def digits_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "digits", DigitsTask())


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread and deterministic kernels, so a short learning run repeats exactly
    on one machine (across CPU instruction sets it still differs: compare against a control
    run in the same test, never against a number measured elsewhere)."""
    import torch

    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *map(chr, range(32, 127)), "\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|im_end|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(".|\n"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=specials,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A registry with `tiny` (kind base, a causal LM) and `tiny-rm` (kind rm, a 1-label classifier)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    registry = Registry(tmp_path_factory.mktemp("registry"))
    tokenizer = char_tokenizer()
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "initializer_range": 0.1,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    reward_model = LlamaForSequenceClassification(LlamaConfig(**shape, num_labels=1))
    for name, kind, model in (("tiny", "base", policy), ("tiny-rm", "rm", reward_model)):
        manifest = Manifest(name=name, kind=kind, base_model=None if kind == "base" else "tiny")
        with registry.write(manifest) as st:
            model.save_pretrained(st, safe_serialization=True)
            tokenizer.save_pretrained(st)
    return registry


@pytest.fixture(scope="module")
def tiny_verifier(tiny: Registry, default_model: Path) -> Registry:
    """`tiny-verifier` (kind verifier) in the tiny registry: a 2-layer random Llama with the
    real SmolLM2 tokenizer, whose " right" / " wrong" are single tokens as the layout needs."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    manifest = Manifest(name="tiny-verifier", kind="verifier", base_model="tiny", extra={"verifier": {}})
    with tiny.write(manifest) as staging:
        LlamaForCausalLM(config).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return tiny


def torchrun_two_cpu_processes(
    module: str, *args: str, timeout_s: float = 500
) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2 -m MODULE ARGS` on CPU (what `accelerate launch` runs;
    accelerate needs ACCELERATE_USE_CPU to pick gloo), one thread per process."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", module, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
