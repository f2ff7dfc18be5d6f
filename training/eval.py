"""Evaluate a policy on a task's held-out prompts against the gold verifier.

What it measures (all on the same prompts; `--limit N` takes the first N):
- greedy: gold accuracy (reward == 1) and mean gold reward;
- with --n: n samples per prompt at --temperature (0.8): per-sample accuracy, pass@n (the
  oracle ceiling of any reranker), majority-of-n when the task can parse answers;
- with --reward-model as well: BoN-n accuracy (the sample the reward model scores highest)
  and BoN's analytic KL, log n - (n-1)/n (Gao et al. 2022; an upper bound per Beirami et
  al. 2024), plus the reward model's pairwise accuracy on pairs drawn from `--pairs-from`
  (default: this policy; pairs follow `data prefs`' rule: gold best vs worst, ties dropped).
  A reward model trained on one policy's samples can fail on another's.
- KL of the policy from its base: the mean over prompts of sum_t [log pi(y_t) - log pi_ref(y_t)]
  on the policy's greedy completions, computed with transformers (for a LoRA entry the
  reference is the same model with the adapter disabled). It is a plug-in estimate on the
  greedy outputs, not on samples of pi, so read it as "how far the answers moved", not as
  an unbiased KL.

Options: training/eval_config.py; command line: training/scripts/eval.py.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.eval_config import EvalConfig


def bon_analytic_kl(n: int) -> float:
    """KL(BoN-n || policy) = log n - (n-1)/n (Gao et al. 2022; upper bound, Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def answer_parser(task_name: str) -> Any:
    """What majority voting compares, for tasks whose answers can be parsed (else None)."""
    if task_name == "arithmetic":
        from training.tasks.arithmetic import parse_answer

        return parse_answer
    if task_name == "sorting":
        from training.tasks.sorting import parse_list

        return lambda text: None if (v := parse_list(text)) is None else tuple(v)
    return None


# --------------------------------------------------------------------------- KL


def kl_to_base(
    policy: Any, registry: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]]
) -> float | None:
    """Mean over prompts of sum_t log pi(y_t|.) - log pi_ref(y_t|.) on the given completions."""
    import torch
    from transformers import AutoModelForCausalLM

    if policy.adapter is None and policy.base_name == policy.name:
        return 0.0  # the base itself
    model = AutoModelForCausalLM.from_pretrained(policy.weights, dtype=torch.float32).eval()
    if policy.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, policy.adapter).eval()
        ref = None
    else:  # full weights: the reference is the base entry they were trained from
        ref = AutoModelForCausalLM.from_pretrained(
            registry.load(policy.base_name).path, dtype=torch.float32
        ).eval()

    def logp(m: Any, ids: torch.Tensor, start: int) -> float:
        logits = m(input_ids=ids).logits[0, start - 1 : -1]
        return float(torch.log_softmax(logits.float(), -1).gather(-1, ids[0, start:, None]).sum())

    total = 0.0
    with torch.no_grad():
        for p, c in zip(prompts, completions, strict=True):
            if not c:
                continue
            ids = torch.tensor([list(p) + list(c)])
            lp = logp(model, ids, len(p))
            if ref is None:
                with model.disable_adapter():
                    lr = logp(model, ids, len(p))
            else:
                lr = logp(ref, ids, len(p))
            total += lp - lr
    return total / len(prompts)


# --------------------------------------------------------------------------- run


def run(config: EvalConfig) -> dict[str, Any]:
    from core.registry import Registry
    from training.generation import (
        prompt_ids,
        resolve_policy,
        resolve_reward_model,
        sample_policy,
        score_rewards,
    )
    from training.prefs import best_vs_worst
    from training.tasks import get_task

    registry = Registry(config.registry) if config.registry else Registry()
    task = get_task(config.task)
    policy = resolve_policy(registry, config.model)
    rm = resolve_reward_model(registry, config.reward_model) if config.reward_model else None
    pairs_from = config.pairs_from or config.model
    examples = task.examples(config.split, config.limit)
    convs = [task.messages(ex) for ex in examples]
    engine = {"enforce_eager": config.enforce_eager, "kv_cache_gib": config.kv_cache_gib, "seed": config.seed}

    # The policy's n samples double as the pair source when --pairs-from is the policy itself.
    n = config.n or 0
    n_policy = config.pairs_k if rm is not None and pairs_from == config.model and n < 2 else n
    greedy, sampled = sample_policy(
        policy,
        convs,
        n=n_policy,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        greedy=True,
        **engine,
    )
    assert greedy is not None
    greedy_rewards = [task.reward(ex, g[0].text) for ex, g in zip(examples, greedy, strict=True)]
    result: dict[str, Any] = {
        "model": config.model,
        "task": config.task,
        "split": config.split,
        "prompts": len(examples),
        "greedy": {
            "accuracy": _mean([r == 1.0 for r in greedy_rewards]),
            "mean_reward": _mean(greedy_rewards),
        },
    }
    gold = None
    if sampled is not None:
        gold = [[task.reward(ex, s.text) for s in per] for ex, per in zip(examples, sampled, strict=True)]
    if config.n and gold is not None:
        first_n = [g[: config.n] for g in gold]
        sampling = {
            "n": config.n,
            "temperature": config.temperature,
            "per_sample_accuracy": _mean([r == 1.0 for g in first_n for r in g]),
            "per_sample_mean_reward": _mean([r for g in first_n for r in g]),
            "pass_at_n": _mean([max(g) == 1.0 for g in first_n]),
        }
        parse = answer_parser(config.task)
        if parse is not None:  # majority-of-n: the most frequent parsed answer (first on ties)
            votes = []
            for ex, per in zip(examples, sampled, strict=True):
                keys = [parse(s.text) for s in per[: config.n]]
                counted = Counter(k for k in keys if k is not None)
                top = counted.most_common(1)[0][0] if counted else None
                votes.append(0.0 if top is None else task.reward(ex, per[keys.index(top)].text))
            sampling["majority_accuracy"] = _mean([v == 1.0 for v in votes])
        result["sampling"] = sampling

    if rm is not None:
        pair_samples, pair_gold = (sampled, gold) if pairs_from == config.model else (None, None)
        if pair_samples is None:
            _, pair_samples = sample_policy(
                resolve_policy(registry, pairs_from),
                convs,
                n=config.pairs_k,
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                **engine,
            )
            assert pair_samples is not None
            pair_gold = [
                [task.reward(ex, s.text) for s in per] for ex, per in zip(examples, pair_samples, strict=True)
            ]
        assert pair_gold is not None
        # Everything the reward model must score, in one engine start: key -> position.
        items: list[tuple[list[dict[str, str]], str]] = []
        index: dict[tuple[str, int, int], int] = {}

        def add(key: tuple[str, int, int], text: str) -> None:
            index[key] = len(items)
            items.append((convs[key[1]], text))

        if config.n and sampled is not None:
            for i, per in enumerate(sampled):
                for j, s in enumerate(per[: config.n]):
                    add(("bon", i, j), s.text)
        pairs = []
        for i, (per, g) in enumerate(zip(pair_samples, pair_gold, strict=True)):
            keep = [j for j, s in enumerate(per) if s.text.strip()]
            pick = best_vs_worst([g[j] for j in keep])
            if pick is None:
                continue
            c, r = keep[pick[0]], keep[pick[1]]
            add(("pair", i, c), per[c].text)
            add(("pair", i, r), per[r].text)
            pairs.append((i, c, r))
        scores = score_rewards(rm.path, items, backend=config.rm_backend, kv_cache_gib=config.kv_cache_gib)
        rm_result: dict[str, Any] = {"reward_model": config.reward_model, "pairs_from": pairs_from}
        if config.n and sampled is not None and gold is not None:
            picks = []
            for i in range(len(examples)):
                s = [scores[index[("bon", i, j)]] for j in range(config.n)]
                picks.append(gold[i][max(range(config.n), key=lambda j: (s[j], -j))])
            rm_result.update(
                {
                    f"bon_{config.n}_accuracy": _mean([p == 1.0 for p in picks]),
                    f"bon_{config.n}_mean_reward": _mean(picks),
                    "bon_analytic_kl": bon_analytic_kl(config.n),
                }
            )
        correct = [scores[index[("pair", i, c)]] > scores[index[("pair", i, r)]] for i, c, r in pairs]
        rm_result["pairwise_accuracy"] = _mean(correct) if correct else None
        rm_result["pairs"] = len(pairs)
        result["reward_model"] = rm_result

    if config.kl:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(policy.entry.path)
        prompts = [prompt_ids(tokenizer, m) for m in convs]
        result["kl_to_base"] = {
            "base": policy.base_name,
            "estimate": kl_to_base(policy, registry, prompts, [g[0].token_ids for g in greedy]),
            "on": "greedy completions",
        }
    result["config"] = asdict(config)
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def _mean(values: Sequence[float | bool]) -> float:
    return sum(float(v) for v in values) / len(values) if values else float("nan")


def format_table(result: dict[str, Any]) -> str:
    rows = [
        ("prompts", f"{result['prompts']} ({result['task']} {result['split']})"),
        ("greedy accuracy", f"{result['greedy']['accuracy']:.3f}"),
        ("greedy mean gold reward", f"{result['greedy']['mean_reward']:.3f}"),
    ]
    s = result.get("sampling")
    if s:
        rows += [
            (f"per-sample accuracy (T={s['temperature']})", f"{s['per_sample_accuracy']:.3f}"),
            (f"pass@{s['n']} (oracle)", f"{s['pass_at_n']:.3f}"),
        ]
        if "majority_accuracy" in s:
            rows.append((f"majority-of-{s['n']} accuracy", f"{s['majority_accuracy']:.3f}"))
    r = result.get("reward_model")
    if r:
        for key, value in r.items():
            if key.startswith("bon_") and key.endswith("_accuracy"):
                rows.append((f"BoN-{key.split('_')[1]} accuracy ({r['reward_model']})", f"{value:.3f}"))
        if "bon_analytic_kl" in r:
            rows.append(("BoN analytic KL (nats)", f"{r['bon_analytic_kl']:.3f}"))
        acc = r["pairwise_accuracy"]
        rows.append(
            (
                f"RM pairwise accuracy ({r['pairs']} pairs from {r['pairs_from']})",
                "n/a" if acc is None else f"{acc:.3f}",
            )
        )
    k = result.get("kl_to_base")
    if k:
        rows.append((f"KL to {k['base']} (nats, {k['on']})", f"{k['estimate']:.3f}"))
    width = max(len(a) for a, _ in rows)
    title = f"bonserve eval: {result['model']}"
    return "\n".join([title, "-" * len(title)] + [f"{a:<{width}}  {b}" for a, b in rows])
