"""Which reward model reranks each served policy, and whether the rerank gate lets it.

A reward model helps only the policy it was trained to judge: one trained on the base's samples
made every tuned policy's Best-of-N worse than that policy's single sample here. So each served
name (a checkpoint or an alias) gets its own reward model, by the first rule that names one:

1. `promotion`: the reward model a promotion paired with the alias (core/desired_state.py);
2. `--reward-models`: the setting's POLICY=RM for the alias, served name or registry entry
   (RM `none`: no reranking);
3. `trained_for`: the newest full reward-model entry whose manifest says it was trained on this
   policy's samples (`extra.trained_for.policy`, written by `bonserve train rm`), unless the
   gate refuses that pairing (an automatic choice never makes answers worse);
4. `--reward-model`: the server's default reward model;
5. none: `best_of > n` then needs a selector without a reward model (server/selectors.py).

The gate is `core.rerank.verdict` over the held-out evaluations recorded in the registry
(`bonserve eval --record`): a pairing whose gap captured is <= 0 does not rerank unless forced
(a promotion's `force`, or `--allow-unhelpful-reward-model`), and a forced one is flagged in
/v1/models, /admin/state, every response's usage and `bonserve_rerank_forced`.

`Rerankers` holds the rules' inputs and one `RewardScorer` (one engine) per distinct reward
model, shared by every policy that maps to it; server/model_manager.py starts and frees the
engines, requests only look up (server/serving.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from core.desired_state import AliasRewardModel
from core.registry import Registry, is_reranker
from core.rerank import Verdict, verdict
from server import metrics
from server.models import ModelRouter, ServedModel
from server.protocol import ModelRerank, RerankVerdict
from server.reward import RewardScorer

logger = logging.getLogger("bonserve.rerankers")

Evaluations = dict[str, dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Pairing:
    """The reward model one served name is reranked by, why, and the gate's verdict."""

    name: str  # the name a request sends (checkpoint or alias)
    policy: str  # the registry entry evaluations are keyed by
    reward_model: str | None
    source: str  # promotion | --reward-models | trained_for | --reward-model | none
    verdict: Verdict | None = None
    forced: bool = False  # reranks although the gate refuses it

    @property
    def usable(self) -> bool:
        """It may rerank: a reward model the gate allows, or one forced past it."""
        return self.verdict is not None and (self.verdict.allowed or self.forced)

    def card(self) -> ModelRerank:
        """The `bonserve` field of this name's /v1/models card."""
        v = self.verdict
        rerank = None
        if v is not None:
            rerank = RerankVerdict(
                evaluated=v.evaluated,
                gap_captured=v.gap_captured,
                pairwise_accuracy=v.pairwise_accuracy,
                allowed=v.allowed,
                forced=self.forced,
                reason=v.reason,
            )
        return ModelRerank(reward_model=self.reward_model, source=self.source, rerank=rerank)


def trained_for_links(registry: Registry) -> dict[str, str]:
    """Policy entry -> the newest full reward-model entry whose manifest names it as the
    policy it was trained for."""
    newest: dict[str, tuple[float, str]] = {}
    for entry in registry.entries():
        m = entry.manifest
        trained_for = m.extra.get("trained_for")
        policy = trained_for.get("policy") if isinstance(trained_for, dict) else None
        if not is_reranker(m) or not isinstance(policy, str) or not policy:
            continue
        if policy not in newest or (m.created_at, m.name) > newest[policy]:
            newest[policy] = (m.created_at, m.name)
    return {policy: name for policy, (_, name) in newest.items()}


@dataclass
class Rerankers:
    """The pairing rules' inputs and the scorers of the reward models in use."""

    default: str | None = None  # --reward-model (or the desired default), by entry name
    explicit: dict[str, str | None] = field(default_factory=dict)  # --reward-models
    allow_unhelpful: bool = False
    links: dict[str, str] = field(default_factory=dict)  # policy entry -> trained_for reward model
    paired: dict[str, AliasRewardModel] = field(default_factory=dict)  # alias -> promotion pairing
    evaluations: Evaluations = field(default_factory=dict)
    scorers: dict[str, RewardScorer] = field(default_factory=dict)  # reward model -> its engine
    _exported: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def single(cls, scorer: RewardScorer | None) -> Rerankers:
        """One default reward model for everything (or none): a server built without a
        model manager, as unit tests build them."""
        if scorer is None:
            return cls()
        return cls(default=scorer.name, scorers={scorer.name: scorer})

    # ------------------------------------------------------------------ rules

    def resolve(self, name: str, model: ServedModel, paired: AliasRewardModel | None) -> Pairing:
        """The rules for `name` (resolving to `model`), given its promotion pairing `paired`
        (None: none; what a promotion about to happen checks)."""
        policy = model.entry_name
        if paired is not None:
            return self._judged(name, policy, paired.reward_model, "promotion", paired.forced)
        for key in (name, model.name, policy):
            if key in self.explicit:
                return self._judged(name, policy, self.explicit[key], "--reward-models")
        linked = self.links.get(policy)
        if linked is not None:
            pairing = self._judged(name, policy, linked, "trained_for")
            if pairing.usable:
                return pairing
            logger.warning("not reranking %s with %s (trained for it): %s", name, linked, _reason(pairing))
        return self._judged(name, policy, self.default, "--reward-model" if self.default else "none")

    def _judged(
        self, name: str, policy: str, reward_model: str | None, source: str, forced: bool = False
    ) -> Pairing:
        if reward_model is None:
            return Pairing(name, policy, None, source)
        v = verdict(self.evaluations, reward_model, policy)
        return Pairing(
            name, policy, reward_model, source, v, (forced or self.allow_unhelpful) and not v.allowed
        )

    def lookup(self, name: str, model: ServedModel, *, alias: bool) -> Pairing:
        """The current pairing of `name`, which resolved to `model` (an alias or not)."""
        return self.resolve(name, model, self.paired.get(name) if alias else None)

    def pairing(self, name: str, router: ModelRouter) -> Pairing:
        """The current pairing of a served name (raises the router's 404 for unknown ones)."""
        return self.lookup(name, router.resolve(name), alias=name in router.aliases())

    def pairings(self, router: ModelRouter) -> dict[str, Pairing]:
        """Every served name's pairing: checkpoints, then aliases."""
        names = [m.name for m in router.all()] + list(router.aliases())
        return {name: self.pairing(name, router) for name in names}

    def needed(self, router: ModelRouter) -> set[str]:
        """The reward models some served name reranks with (their engines must run)."""
        return {p.reward_model for p in self.pairings(router).values() if p.reward_model and p.usable}

    # ------------------------------------------------------------------ scorers

    def scorer(self, reward_model: str | None) -> RewardScorer | None:
        return self.scorers.get(reward_model) if reward_model else None

    @property
    def default_scorer(self) -> RewardScorer | None:
        return self.scorer(self.default)

    def engine_key(self, reward_model: str) -> str:
        """The reward engine's key in the server's engines (/ready): 'reward' for the default
        reward model, as before pairings existed, else 'reward:NAME'."""
        return "reward" if reward_model == self.default else f"reward:{reward_model}"

    # ------------------------------------------------------------------ metrics

    def export(self, router: ModelRouter) -> None:
        """Set the rerank gauges of every current pairing with a reward model (from start-up
        on, so dashboards and alerts see them before any request) and drop stale ones."""
        current = set()
        for p in self.pairings(router).values():
            if p.reward_model is None or p.verdict is None:
                continue
            labels = (p.name, p.reward_model)
            current.add(labels)
            gap = p.verdict.gap_captured
            metrics.RERANK_GAP_CAPTURED.labels(*labels).set(math.nan if gap is None else gap)
            metrics.RERANK_ALLOWED.labels(*labels).set(1 if p.verdict.allowed else 0)
            metrics.RERANK_FORCED.labels(*labels).set(1 if p.forced else 0)
        for labels in self._exported - current:
            for gauge in (metrics.RERANK_GAP_CAPTURED, metrics.RERANK_ALLOWED, metrics.RERANK_FORCED):
                gauge.remove(*labels)
        self._exported = current


def _reason(pairing: Pairing) -> str:
    return pairing.verdict.reason if pairing.verdict is not None else "no reward model"
