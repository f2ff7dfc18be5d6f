"""Everything a running server owns, built once per app and stored on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.admission import Admission
from server.chat import ChatServing
from server.completions import CompletionServing
from server.config import Settings
from server.engines import ManagedEngine
from server.model_manager import ModelManager
from server.models import ModelRouter
from server.rerankers import Rerankers
from server.reward import RewardScorer


@dataclass
class AppState:
    settings: Settings
    router: ModelRouter
    engines: dict[str, ManagedEngine]
    admission: Admission
    manager: ModelManager | None = None
    rerank: Rerankers = field(default_factory=Rerankers)  # which reward model reranks each policy
    chat: ChatServing = field(init=False)
    completions: CompletionServing = field(init=False)
    draining: bool = False

    def __post_init__(self) -> None:
        if self.manager is not None:  # one set of pairings, which promotions change
            self.rerank = self.manager.rerank
        self.chat = ChatServing(self.settings, self.router, self.admission, self.rerank)
        self.completions = CompletionServing(self.settings, self.router, self.admission, self.rerank)

    @property
    def reward(self) -> RewardScorer | None:
        """The default reward model's scorer (--reward-model)."""
        return self.rerank.default_scorer

    @property
    def ready(self) -> bool:
        started = self.manager is None or self.manager.started  # start-up adapter and reconcile
        return not self.draining and started and all(e.ready for e in self.engines.values())
