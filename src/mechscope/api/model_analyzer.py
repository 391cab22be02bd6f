"""`ModelAnalyzer`: the seed's logit-lens front, sync and async, built on the generic `Analyzer`.

The async API runs the sync core in a worker thread, so an event loop stays responsive while a model
computes. Calls on one analyzer are serialised by a lock: hooks and the model are shared state.

Examples:
    >>> import asyncio, mechscope as ms
    >>> async def main():
    ...     async with ms.ModelAnalyzer.from_pretrained("toy") as analyzer:
    ...         result = await analyzer.analyze("The capital of France is", ms.AnalysisConfig(top_k=3))
    ...         return result.predicted_token
    >>> asyncio.run(main())
    ' Paris'
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from pydantic import BaseModel, Field

from mechscope.api import tasks
from mechscope.api.analyzer import Analyzer
from mechscope.core.layers import LayerStrategy, select_layers
from mechscope.core.lm import LanguageModel
from mechscope.lens.results import LensResult


class AnalysisConfig(BaseModel):
    """What to analyse: which layers, how many top tokens, which tokens to track, which position.

    Examples:
        >>> import mechscope as ms
        >>> config = ms.AnalysisConfig(layer_strategy="custom", layers=[1, 3], top_k=2, track_tokens=[" Paris"])
        >>> result = ms.ModelAnalyzer(ms.load("toy")).analyze_sync("The capital of France is", config)
        >>> [p.layer for p in result.layer_predictions], result.predicted_token
        ([1, 3], ' Paris')
    """

    layer_strategy: LayerStrategy = LayerStrategy.ALL
    layer_step: int = Field(default=4, ge=1)
    layers: list[int] | None = None  # for LayerStrategy.CUSTOM
    top_k: int = Field(default=5, ge=1)
    track_tokens: list[str] = Field(default_factory=list)
    position: int = -1


class ModelAnalyzer(Analyzer):
    """The seed's interface: logit-lens analysis of one model from sync or async code.

    It is an `Analyzer`, so every other analysis is there too (``analyzer.patch(...)``,
    ``analyzer.patch(...)``,
    ``await analyzer.aio.heads()``); ``analyze`` and ``analyze_batch`` keep the seed's signatures.

    Examples:
        >>> import mechscope as ms
        >>> analyzer = ms.ModelAnalyzer.from_pretrained("toy")
        >>> results = analyzer.analyze_batch_sync(["The capital of France is", "The capital of Peru is"])
        >>> [result.predicted_token for result in results]
        [' Paris', ' Lima']
    """

    @classmethod
    def from_pretrained(cls, name: str, **load_kwargs: Any) -> ModelAnalyzer:
        """An analyzer that loads ``name`` (organism, folder or hub id) when entered or first used."""
        return cls(name=name, **load_kwargs)

    async def __aenter__(self) -> ModelAnalyzer:
        await asyncio.to_thread(lambda: self.lm)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def analyze_batch_sync(self, prompts: Sequence[str], config: AnalysisConfig | None = None) -> list[LensResult]:
        """The lens on several prompts in one batch (the sync core of every other method)."""
        config = config or AnalysisConfig()

        def run(lm: LanguageModel) -> list[LensResult]:
            layers = select_layers(lm.arch.n_layers, config.layer_strategy, config.layer_step, config.layers)
            return tasks.lens(
                lm,
                list(prompts),
                layers=layers,
                position=config.position,
                top_k=config.top_k,
                track=config.track_tokens,
            )

        return self.run(run)

    def analyze_sync(self, prompt: str, config: AnalysisConfig | None = None) -> LensResult:
        """The lens on one prompt."""
        return self.analyze_batch_sync([prompt], config)[0]

    async def analyze(self, prompt: str, config: AnalysisConfig | None = None) -> LensResult:
        """The lens on one prompt, computed in a worker thread."""
        return await asyncio.to_thread(self.analyze_sync, prompt, config)

    async def analyze_batch(self, prompts: Sequence[str], config: AnalysisConfig | None = None) -> list[LensResult]:
        """The lens on several prompts (one padded batch), computed in a worker thread."""
        return await asyncio.to_thread(self.analyze_batch_sync, prompts, config)
