"""What a server starts on: `--model` / `--reward-model`, unless the registry's desired state
(core/desired_state.py) says a promotion moved the server's `--alias` or the reward model
elsewhere, so a replica started after a promotion starts on the promoted checkpoint instead of
swapping to it once up.

A LoRA entry can be the start-up policy: the engine loads its base with LoRA on, and the
adapter is added before the server reports ready (served under the entry's name).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core.desired_state import DesiredState, DesiredStateError, read_desired
from core.lora import check_servable_adapter, full_weights_of, smallest_servable_rank
from core.registry import RERANKER_KINDS, Entry, Registry, RegistryError, is_reranker
from core.rerank import read_evaluations
from server.config import Settings
from server.rerankers import Rerankers, trained_for_links

logger = logging.getLogger("bonserve.startup")


@dataclass
class PolicyStart:
    path: Path  # full weights the policy engine loads
    served_name: str  # their name on the server
    weights: str  # their registry entry name (the directory's name for a directory)
    base: str  # the base model LoRA entries must be trained on (from --model, fleet-wide)
    lora: Entry | None = None  # an adapter added at start; the alias points at it
    lora_name: str | None = None  # its served name
    lora_options: tuple[int, int] | None = None  # (max_loras, max_lora_rank) LoRA start-up turned on
    source: str = "--model"

    @property
    def target(self) -> str:
        """The served name the start-up alias points at."""
        return self.lora_name or self.served_name

    def served_as(self) -> dict[str, str]:
        """Registry entry name -> served name, for the entries served under another name."""
        names = {self.weights: self.served_name}
        if self.lora is not None and self.lora_name:
            names[self.lora.name] = self.lora_name
        return names


def read_desired_state(settings: Settings) -> DesiredState:
    """The recorded state, or an empty one (logged) when the file cannot be read: a broken
    file must not keep a replica from starting on its configured checkpoints."""
    try:
        return read_desired(settings.registry)
    except DesiredStateError as exc:
        logger.error("ignoring the desired state at start-up: %s", exc)
        return DesiredState()


def resolve_checkpoint(settings: Settings, spec: str, flag: str) -> tuple[Path, str, Entry | None]:
    """A checkpoint directory or a registry entry name -> (path, name, entry or None)."""
    candidate = Path(spec).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise SystemExit(f"{flag} {spec!r}: directory has no config.json (not an HF checkpoint)")
        return candidate.resolve(), candidate.name, None
    try:
        entry = Registry(settings.registry).load(spec)
    except RegistryError as exc:
        raise SystemExit(
            f"{flag} {spec!r} is neither a checkpoint directory nor a valid registry entry "
            f"({exc}). Run `bonserve models prepare` for the default model."
        ) from exc
    return entry.path, entry.name, entry


def _policy_from(settings: Settings, spec: str, flag: str, served_name: str | None) -> PolicyStart:
    path, name, entry = resolve_checkpoint(settings, spec, flag)
    if entry is None:
        return PolicyStart(path, served_name or name, name, name, source=flag)
    if entry.manifest.kind in RERANKER_KINDS:
        what = "reward model" if entry.manifest.kind == "rm" else "generative verifier"
        raise SystemExit(f"{flag} {spec!r} is a {what} (kind {entry.manifest.kind}): use --reward-model")
    if entry.manifest.format != "lora":
        base = entry.manifest.base_model or entry.name
        return PolicyStart(path, served_name or entry.name, entry.name, base, source=flag)
    registry = Registry(settings.registry)
    try:
        weights = full_weights_of(registry, entry)
        # With LoRA on (--max-loras) the adapter must fit the configured rank cap; otherwise
        # LoRA is turned on for it alone, at the smallest cap that fits.
        config = check_servable_adapter(entry.path, settings.max_lora_rank if settings.max_loras else None)
    except RegistryError as exc:
        raise SystemExit(f"{flag} {spec!r}: {exc}") from exc
    options = None if settings.max_loras else (1, smallest_servable_rank(int(config["r"])))
    return PolicyStart(
        weights.path,
        weights.name,
        weights.name,
        weights.name,
        lora=entry,
        lora_name=served_name or entry.name,
        lora_options=options,
        source=flag,
    )


def plan_policy(settings: Settings, desired: DesiredState) -> PolicyStart:
    """The start-up policy: `--model`, or the desired target of `--alias` when one is recorded
    and usable (a bad one is logged and `--model` used, so the replica still starts)."""
    configured = _policy_from(settings, settings.model, "--model", settings.served_model_name)
    target = desired.aliases.get(settings.alias) if settings.alias else None
    if target is None or target in (settings.model, configured.lora.name if configured.lora else None):
        return configured
    try:
        plan = _policy_from(settings, target, f"desired state ({settings.alias} -> {target})", None)
    except SystemExit as exc:
        logger.error("starting on --model %s instead of the desired %s: %s", settings.model, target, exc)
        return configured
    # Which LoRA entries this server accepts is fixed by --model, so every replica of a fleet
    # agrees whatever it started on.
    plan.base = configured.base
    if plan.lora is not None and plan.lora.manifest.base_model != configured.base:
        logger.error("starting on --model %s: the desired %s is not on its base", settings.model, target)
        return configured
    logger.info("starting on %s (the desired target of alias %s), not --model", target, settings.alias)
    return plan


def plan_reward(settings: Settings, desired: DesiredState) -> tuple[Path, str, str] | None:
    """The start-up reward model (path, name, kind): the desired one when this server runs a
    reward engine at all (`--reward-model`) and the recorded entry is a full reranker (a reward
    model or a generative verifier); else the setting (a directory counts as kind rm)."""
    if not settings.reward_model:
        return None
    target = desired.reward_model
    if target and target != settings.reward_model:
        try:
            entry = Registry(settings.registry).load(target)
            if is_reranker(entry.manifest):
                logger.info("starting the reward engine on %s (the desired reward model)", target)
                return entry.path, entry.name, entry.manifest.kind
            logger.error("desired reward model %s is not a full reward model: ignored", target)
        except RegistryError as exc:
            logger.error("desired reward model %s: %s: using --reward-model", target, exc)
    path, name, setting = resolve_checkpoint(settings, settings.reward_model, "--reward-model")
    return path, name, setting.manifest.kind if setting is not None else "rm"


def plan_rerankers(settings: Settings, desired: DesiredState, policy: PolicyStart) -> Rerankers:
    """The pairing rules' inputs at start-up (server/rerankers.py): --reward-models (every
    reward model it names must be a full reward-model entry), the start-up alias's recorded
    pairing when the alias starts on its desired target, the recorded evaluations, and the
    trained_for links on servers that rerank. Scorers come later (the default in build_state,
    the rest when the manager starts)."""
    registry = Registry(settings.registry)
    rerank = Rerankers(
        explicit=settings.reward_model_map(), allow_unhelpful=settings.allow_unhelpful_reward_model
    )
    for policy_name, rm in rerank.explicit.items():
        if rm is None:
            continue
        try:
            entry = registry.load(rm)
        except RegistryError as exc:
            raise SystemExit(f"--reward-models {policy_name}={rm}: {exc}") from exc
        if not is_reranker(entry.manifest):
            raise SystemExit(f"--reward-models {policy_name}={rm}: not a full reward-model or verifier entry")
    alias = settings.alias
    pairing = desired.alias_reward_models.get(alias) if alias else None
    if alias and pairing is not None:
        started_on = {policy.weights, policy.lora.name if policy.lora else policy.weights}
        if desired.aliases.get(alias) in started_on:
            rerank.paired[alias] = pairing
    try:
        rerank.evaluations = read_evaluations(settings.registry)
    except DesiredStateError as exc:
        logger.error("ignoring the rerank evaluations at start-up: %s", exc)
    if settings.reward_model or settings.reward_models:
        rerank.links = trained_for_links(registry)
    return rerank
