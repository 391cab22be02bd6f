"""`ModelAnalyzer`: the logit lens behind a sync and an async API.

The async API runs the sync core in a worker thread, so an event loop stays responsive while a model
computes. Calls on one analyzer are serialised by a lock: hooks and the model are shared state.

Example:
    >>> import asyncio, mechscope as ms
    >>> async def main():  # doctest: +SKIP
    ...     async with ms.ModelAnalyzer.from_pretrained("toy") as analyzer:
    ...         result = await analyzer.analyze("The capital of France is", ms.AnalysisConfig(top_k=3))
    ...         return result.predicted_token
    >>> asyncio.run(main())  # doctest: +SKIP
    ' Paris'
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from pydantic import BaseModel, Field

from mechscope.core.lm import LanguageModel, load
from mechscope.errors import MechscopeError
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import LensResult
from mechscope.lens.strategy import LayerStrategy, select_layers


class AnalysisConfig(BaseModel):
    """What to analyse: which layers, how many top tokens, which tokens to track, which position."""

    layer_strategy: LayerStrategy = LayerStrategy.ALL
    layer_step: int = Field(default=4, ge=1)
    layers: list[int] | None = None  # for LayerStrategy.CUSTOM
    top_k: int = Field(default=5, ge=1)
    track_tokens: list[str] = Field(default_factory=list)
    position: int = -1


class ModelAnalyzer:
    """Logit-lens analysis of one model, callable from sync or async code."""

    def __init__(self, lm: LanguageModel | None = None, *, name: str | None = None, **load_kwargs: Any) -> None:
        if lm is None and name is None:
            raise MechscopeError("give ModelAnalyzer a loaded model or a name to load")
        self._lm = lm
        self._name = name
        self._load_kwargs = load_kwargs
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name: str, **load_kwargs: Any) -> ModelAnalyzer:
        """An analyzer that loads ``name`` (organism, folder or hub id) when entered or first used."""
        return cls(name=name, **load_kwargs)

    @property
    def lm(self) -> LanguageModel:
        """The model (loaded on first use)."""
        if self._lm is None:
            assert self._name is not None
            self._lm = load(self._name, **self._load_kwargs)
        return self._lm

    async def __aenter__(self) -> ModelAnalyzer:
        await asyncio.to_thread(lambda: self.lm)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def __enter__(self) -> ModelAnalyzer:
        _ = self.lm
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def analyze_batch_sync(self, prompts: Sequence[str], config: AnalysisConfig | None = None) -> list[LensResult]:
        """The lens on several prompts in one batch (the sync core of every other method)."""
        config = config or AnalysisConfig()
        with self._lock:
            lm = self.lm
            layers = select_layers(lm.arch.n_layers, config.layer_strategy, config.layer_step, config.layers)
            return LogitLens(lm).run(
                list(prompts), layers=layers, position=config.position, top_k=config.top_k, track=config.track_tokens
            )

    def analyze_sync(self, prompt: str, config: AnalysisConfig | None = None) -> LensResult:
        """The lens on one prompt."""
        return self.analyze_batch_sync([prompt], config)[0]

    async def analyze(self, prompt: str, config: AnalysisConfig | None = None) -> LensResult:
        """The lens on one prompt, computed in a worker thread."""
        return await asyncio.to_thread(self.analyze_sync, prompt, config)

    async def analyze_batch(self, prompts: Sequence[str], config: AnalysisConfig | None = None) -> list[LensResult]:
        """The lens on several prompts (one padded batch), computed in a worker thread."""
        return await asyncio.to_thread(self.analyze_batch_sync, prompts, config)
