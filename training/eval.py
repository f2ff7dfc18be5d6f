"""Evaluate a policy on a task's held-out prompts against the gold verifier.

What it measures (all on the same prompts; `--limit N` takes the first N):
- greedy: gold accuracy (reward == 1) and mean gold reward;
- with --n: n samples per prompt at --temperature (0.8): per-sample accuracy, pass@n (the
  oracle ceiling of any reranker), majority-of-n when the task can parse answers;
- selectors over the same n samples, each with its accuracy, 95% interval and *share of the
  oracle gap captured*, (selected - per-sample) / (pass@n - per-sample): `logprob` (highest
  mean token log-probability), `majority` (most frequent parsed answer), and with
  --reward-model `reward` (Best-of-N: the highest reward) and `reward+majority` (majority,
  the reward model breaking ties between answers and picking the representative);
- with --reward-model as well: BoN-n accuracy, its paired difference from greedy, BoN's
  analytic KL, log n - (n-1)/n (Gao et al. 2022; an upper bound per Beirami et al. 2024),
  and the reward model's pairwise accuracy on held-out pairs drawn from `--pairs-from`
  (default: this policy): every (correct, wrong) combination of distinct replies per prompt.
  A reward model trained on one policy's samples can fail on another's. `--record` stores
  the measured effect in the registry (core/rerank.py), where the server's gate reads it.
- with --out X.json, X.prompts.jsonl holds every prompt's samples, gold outcomes, rewards,
  log-probabilities and each selector's pick, so every number can be recomputed.
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


# --------------------------------------------------------------------------- selectors


def pick_reward(rewards: Sequence[float]) -> int:
    """The highest reward (the first on ties): plain Best-of-N."""
    return max(range(len(rewards)), key=lambda j: (rewards[j], -j))


def pick_majority(keys: Sequence[Any], tiebreak: Sequence[float] | None = None) -> int | None:
    """A sample of the most frequent parsed answer (None: no sample parses). Ties between
    answers go to the one holding the best `tiebreak` score, else to the first seen; the
    representative is its best-scored (else first) sample."""
    groups: dict[Any, list[int]] = {}
    for j, k in enumerate(keys):
        if k is not None:
            groups.setdefault(k, []).append(j)
    if not groups:
        return None

    def best(members: list[int]) -> int:
        return members[0] if tiebreak is None else max(members, key=lambda j: (tiebreak[j], -j))

    def strength(members: list[int]) -> tuple[int, float, int]:
        score = 0.0 if tiebreak is None else tiebreak[best(members)]
        return len(members), score, -members[0]

    return best(max(groups.values(), key=strength))


def gap_captured(selected: float, per_sample: float, oracle: float) -> float | None:
    """Share of the oracle's gain over one sample that a selector realises (None: no gap)."""
    gap = oracle - per_sample
    return None if gap <= 1e-12 else (selected - per_sample) / gap


def ci95(values: Sequence[float | bool]) -> float:
    """Half-width of the normal 95% interval of a mean."""
    if len(values) < 2:
        return float("nan")
    m = _mean(values)
    var = sum((float(v) - m) ** 2 for v in values) / (len(values) - 1)
    return 1.96 * math.sqrt(var / len(values))


# --------------------------------------------------------------------------- run


def run(config: EvalConfig) -> dict[str, Any]:
    from core.engine_args import default_dtype, resolve_dtype
    from core.registry import Registry
    from training.generation import (
        prompt_ids,
        resolve_policy,
        resolve_reward_model,
        sample_policy,
        score_rewards,
    )
    from training.prefs import all_pairs
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
        logprobs=True,
        **engine,
    )
    assert greedy is not None
    greedy_rewards = [task.reward(ex, g[0].text) for ex, g in zip(examples, greedy, strict=True)]
    greedy_correct = [r == 1.0 for r in greedy_rewards]
    result: dict[str, Any] = {
        "model": config.model,
        "task": config.task,
        "split": config.split,
        "prompts": len(examples),
        # The offline engines' dtype (BONSERVE_DTYPE, else by device): bfloat16 and float32
        # give different greedy answers, so a comparison across machines needs it.
        "engine_dtype": resolve_dtype(default_dtype()),
        "greedy": {
            "accuracy": _mean(greedy_correct),
            "accuracy_ci95": ci95(greedy_correct),
            "mean_reward": _mean(greedy_rewards),
        },
    }
    gold = None
    if sampled is not None:
        gold = [[task.reward(ex, s.text) for s in per] for ex, per in zip(examples, sampled, strict=True)]
    parse = answer_parser(config.task)
    keys = None
    # Per prompt: which sample each selector picks (None: it picks nothing, counted wrong).
    picks: dict[str, list[int | None]] = {}
    if config.n and gold is not None and sampled is not None:
        first_n = [g[: config.n] for g in gold]
        per_sample = _mean([r == 1.0 for g in first_n for r in g])
        oracle = [max(g) == 1.0 for g in first_n]
        sampling = {
            "n": config.n,
            "temperature": config.temperature,
            "per_sample_accuracy": per_sample,
            "per_sample_mean_reward": _mean([r for g in first_n for r in g]),
            "pass_at_n": _mean(oracle),
            "pass_at_n_ci95": ci95(oracle),
        }
        logp = [
            [s.mean_logprob if s.mean_logprob is not None else -math.inf for s in per[: config.n]]
            for per in sampled
        ]
        picks["logprob"] = [pick_reward(lp) for lp in logp]
        if parse is not None:
            keys = [[parse(s.text) for s in per[: config.n]] for per in sampled]
            picks["majority"] = [pick_majority(k) for k in keys]
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
            if key not in index:
                index[key] = len(items)
                items.append((convs[key[1]], text))

        if config.n and sampled is not None:
            for i, per in enumerate(sampled):
                for j, s in enumerate(per[: config.n]):
                    add(("bon", i, j), s.text)
        # Held-out pairs: every (correct, wrong) combination of distinct non-empty replies.
        pairs = []
        for i, (per, g) in enumerate(zip(pair_samples, pair_gold, strict=True)):
            keep = [j for j, s in enumerate(per) if s.text.strip()]
            for a, b in all_pairs([per[j].text for j in keep], [g[j] for j in keep]):
                c, r = keep[a], keep[b]
                add(("pair", i, c), per[c].text)
                add(("pair", i, r), per[r].text)
                pairs.append((i, c, r))
        scores = score_rewards(rm.path, items, backend=config.rm_backend, kv_cache_gib=config.kv_cache_gib)
        rm_result: dict[str, Any] = {"reward_model": config.reward_model, "pairs_from": pairs_from}
        if config.n and sampled is not None and gold is not None:
            rewards = [[scores[index[("bon", i, j)]] for j in range(config.n)] for i in range(len(examples))]
            picks["reward"] = [pick_reward(r) for r in rewards]
            if keys is not None:
                picks["reward+majority"] = [pick_majority(k, r) for k, r in zip(keys, rewards, strict=True)]
            bon = [gold[i][p] == 1.0 if p is not None else False for i, p in enumerate(picks["reward"])]
            rm_result.update(
                {
                    f"bon_{config.n}_accuracy": _mean(bon),
                    f"bon_{config.n}_accuracy_ci95": ci95(bon),
                    f"bon_{config.n}_mean_reward": _mean(
                        [gold[i][p] for i, p in enumerate(picks["reward"]) if p is not None]
                    ),
                    "bon_minus_greedy": _mean(bon) - _mean(greedy_correct),
                    "bon_minus_greedy_ci95": ci95(
                        [float(b) - float(g) for b, g in zip(bon, greedy_correct, strict=True)]
                    ),
                    "bon_analytic_kl": bon_analytic_kl(config.n),
                }
            )
        else:
            rewards = None
        correct = [scores[index[("pair", i, c)]] > scores[index[("pair", i, r)]] for i, c, r in pairs]
        rm_result["pairwise_accuracy"] = _mean(correct) if correct else None
        rm_result["pairwise_accuracy_ci95"] = ci95(correct) if correct else None
        rm_result["pairs"] = len(pairs)
        rm_result["pair_prompts"] = len({i for i, _, _ in pairs})
        result["reward_model"] = rm_result
    else:
        rewards = None

    if picks and gold is not None and config.n:
        s = result["sampling"]
        selectors: dict[str, Any] = {}
        for name, chosen in picks.items():
            ok = [gold[i][p] == 1.0 if p is not None else False for i, p in enumerate(chosen)]
            selectors[name] = {
                "accuracy": _mean(ok),
                "accuracy_ci95": ci95(ok),
                "gap_captured": gap_captured(_mean(ok), s["per_sample_accuracy"], s["pass_at_n"]),
            }
        s["selectors"] = selectors
        if "majority" in selectors:
            s["majority_accuracy"] = selectors["majority"]["accuracy"]
        if "reward" in selectors:
            result["reward_model"]["gap_captured"] = selectors["reward"]["gap_captured"]

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
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True))
        from training.data import write_jsonl

        # Per prompt, everything the summary is computed from, so any number can be redone.
        write_jsonl(
            out.with_name(out.stem + ".prompts.jsonl"),
            (
                {
                    "id": ex.id,
                    "prompt": ex.prompt,
                    "meta": ex.meta,
                    "greedy": greedy[i][0].text,
                    "greedy_gold": greedy_rewards[i],
                    "samples": None if sampled is None else [x.text for x in sampled[i][: config.n or None]],
                    "gold": None if gold is None else gold[i][: config.n or None],
                    "mean_logprob": None
                    if sampled is None
                    else [x.mean_logprob for x in sampled[i][: config.n or None]],
                    "rewards": None if rewards is None else rewards[i],
                    "picks": {name: chosen[i] for name, chosen in picks.items()},
                }
                for i, ex in enumerate(examples)
            ),
        )
    if config.record:
        if rm is None or not config.n or "reward_model" not in result:
            from core.flags import ConfigError

            raise ConfigError("--record needs --reward-model and --n: it stores Best-of-N's measured effect")
        from core.rerank import record_evaluation

        s, r = result["sampling"], result["reward_model"]
        record_evaluation(
            registry.root,
            config.reward_model or "",
            config.model,
            {
                "gap_captured": r.get("gap_captured"),
                "pairwise_accuracy": r["pairwise_accuracy"],
                "pairs": r["pairs"],
                "bon_accuracy": r[f"bon_{config.n}_accuracy"],
                "per_sample_accuracy": s["per_sample_accuracy"],
                "pass_at_n": s["pass_at_n"],
                "majority_accuracy": s.get("majority_accuracy"),
                "n": config.n,
                "temperature": config.temperature,
                "prompts": len(examples),
                "task": config.task,
                "split": config.split,
            },
            source=config.out,
        )
        result["recorded"] = str(registry.root)
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
    r = result.get("reward_model")
    if s and "selectors" in s:
        for name, sel in s["selectors"].items():
            gap = "n/a" if sel["gap_captured"] is None else f"{sel['gap_captured']:.2f}"
            label = f"{name} ({r['reward_model']})" if name.startswith("reward") and r else name
            rows.append(
                (
                    f"BoN-{s['n']} by {label}",
                    f"{sel['accuracy']:.3f} ± {sel['accuracy_ci95']:.3f}  gap captured {gap}",
                )
            )
    if r:
        if "bon_minus_greedy" in r:
            rows.append(
                (
                    "BoN minus greedy (paired)",
                    f"{r['bon_minus_greedy']:+.3f} ± {r['bon_minus_greedy_ci95']:.3f}",
                )
            )
        if "bon_analytic_kl" in r:
            rows.append(("BoN analytic KL (nats)", f"{r['bon_analytic_kl']:.3f}"))
        acc = r["pairwise_accuracy"]
        rows.append(
            (
                f"RM pairwise accuracy ({r['pairs']} pairs from {r['pairs_from']})",
                "n/a" if acc is None else f"{acc:.3f} ± {r['pairwise_accuracy_ci95']:.3f}",
            )
        )
    k = result.get("kl_to_base")
    if k:
        rows.append((f"KL to {k['base']} (nats, {k['on']})", f"{k['estimate']:.3f}"))
    width = max(len(a) for a, _ in rows)
    title = f"bonserve eval: {result['model']}"
    return "\n".join([title, "-" * len(title)] + [f"{a:<{width}}  {b}" for a, b in rows])
