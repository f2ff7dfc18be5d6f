"""PPO rollout throughput: vLLM (with the policy's LoRA adapter, as PPO runs it) against HF
`generate` on the same model, prompts and sampling settings, in one run.

    .venv/bin/python benchmarks/rollout_throughput.py --prompts 32 --repeats 3 \
        --out docs/benchmarks/rollout_throughput.json

Each backend generates the same batch `--repeats` times after one warm-up; tokens/s counts
generated tokens (end token included). Reports medians and the vLLM / HF ratio. The adapter is
a fresh LoRA (r=16, all linear layers), saved exactly as training/ppo_rollouts.py saves it each
iteration, and vLLM gets it as a new LoRARequest every repeat, so adapter loading is part of
the time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from core.registry import DEFAULT_MODEL_NAME, Registry


def timed(fn: Any, repeats: int) -> tuple[list[float], int]:
    fn(-1)  # warm-up
    times, tokens = [], 0
    for i in range(repeats):
        t0 = time.perf_counter()
        tokens = fn(i)
        times.append(time.perf_counter() - t0)
    return times, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-batch-size", type=int, default=16, help="PPO's forward_batch_size default")
    parser.add_argument("--registry", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.common import lora_config
    from training.generation import llm_kwargs, open_llm, prompt_ids
    from training.ppo_config import PPOConfig
    from training.ppo_rollouts import HFRollouts
    from training.tasks import get_task
    from training.train_config import TrainConfig

    path = (Registry(args.registry) if args.registry else Registry()).load(DEFAULT_MODEL_NAME).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = get_task("arithmetic")
    queries = [prompt_ids(tokenizer, task.messages(ex)) for ex in task.examples("train", args.prompts)]
    torch.manual_seed(0)
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        lora_config(TrainConfig(data="-", name="bench"), "CAUSAL_LM"),
    ).eval()
    results: dict[str, Any] = {
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "repeats": args.repeats,
    }

    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        policy.save_pretrained(str(adapter))
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        with open_llm(llm_kwargs(path, lora_rank=16)) as llm:

            def vllm_batch(i: int) -> int:
                policy.save_pretrained(str(adapter))  # what PPO does before each rollout
                params = SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens, seed=i)
                outs = llm.generate(
                    [{"prompt_token_ids": q} for q in queries],
                    params,
                    lora_request=LoRARequest(f"bench-{i}", i + 2, str(adapter)),
                    use_tqdm=False,
                )
                return sum(len(o.outputs[0].token_ids) for o in outs)

            vllm_times, vllm_tokens = timed(vllm_batch, args.repeats)

    config = PPOConfig(
        name="bench",
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        forward_batch_size=args.hf_batch_size,
    )
    hf = HFRollouts(config, tokenizer)
    eos = tokenizer.eos_token_id

    def hf_batch(i: int) -> int:
        rows = hf.generate(policy, queries, i)
        return sum(row.index(eos) + 1 if eos in row else len(row) for row in rows)

    hf_times, hf_tokens = timed(hf_batch, args.repeats)
    v_rate = [vllm_tokens / t for t in vllm_times]
    h_rate = [hf_tokens / t for t in hf_times]
    results.update(
        {
            "vllm": {
                "seconds": vllm_times,
                "tokens": vllm_tokens,
                "tokens_per_s_median": statistics.median(v_rate),
            },
            "hf_generate": {
                "seconds": hf_times,
                "tokens": hf_tokens,
                "tokens_per_s_median": statistics.median(h_rate),
            },
        }
    )
    results["ratio_vllm_over_hf"] = (
        results["vllm"]["tokens_per_s_median"] / results["hf_generate"]["tokens_per_s_median"]
    )
    print(json.dumps(results, indent=2))
    print(
        f"vLLM {results['vllm']['tokens_per_s_median']:.0f} tok/s, HF generate "
        f"{results['hf_generate']['tokens_per_s_median']:.0f} tok/s: "
        f"ratio {results['ratio_vllm_over_hf']:.2f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
