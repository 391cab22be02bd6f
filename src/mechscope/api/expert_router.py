"""`ExpertRouter`: the async mixture-of-experts front that MLX-introspection users know, on any HF MoE model.

    async with await ExpertRouter.from_pretrained("toy-moe") as router:
        router.info.num_experts, router.info.num_active_experts
        usage = await router.utilization(prompts)

Each method awaits one function of `mechscope.api.moe_tasks` run by an `Analyzer` in a worker thread (one
call at a time on the model), so an event loop stays responsive while the model computes; results are the
library's pydantic models. ``from_pretrained`` loads the model (in a thread) and checks that it has
experts: a dense model raises `mechscope.errors.MoEError` there, in one line.

Example:
    >>> import asyncio
    >>> async def main():
    ...     async with await ExpertRouter.from_pretrained("toy-moe") as router:
    ...         trace = await router.trace("The capital of France is")
    ...         return router.info.num_experts, router.info.num_active_experts, len(trace.layers)
    >>> asyncio.run(main())
    (4, 2, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from mechscope.api import moe_tasks
from mechscope.api.analyzer import Analyzer
from mechscope.core.lm import LanguageModel
from mechscope.moe.results import MoEInfo, RoutingTrace, Utilization


class ExpertRouter:
    """One MoE model and its routing analyses, awaited; build it with `from_pretrained` or from an `Analyzer`."""

    def __init__(self, analyzer: Analyzer, info: MoEInfo) -> None:
        self.analyzer = analyzer
        self.info = info

    @classmethod
    async def from_pretrained(cls, name: str, **load_kwargs: Any) -> ExpertRouter:
        """Load ``name`` (organism, folder or hub id; `mechscope.load`'s options) and read its routing."""
        analyzer = Analyzer.from_pretrained(name, **load_kwargs)
        info = await analyzer.aio.run(moe_tasks.moe_info)
        return cls(analyzer, info)

    @classmethod
    async def wrap(cls, lm: LanguageModel) -> ExpertRouter:
        """A router on a model already loaded (`mechscope.load` or `mechscope.wrap`)."""
        analyzer = Analyzer(lm)
        return cls(analyzer, await analyzer.aio.run(moe_tasks.moe_info))

    @property
    def lm(self) -> LanguageModel:
        """The model."""
        return self.analyzer.lm

    async def __aenter__(self) -> ExpertRouter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def trace(self, prompt: str, *, layers: Sequence[int] | None = None) -> RoutingTrace:
        """One prompt's routing, token by token (`mechscope.moe.trace`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_trace, prompt, layers=layers)

    async def utilization(
        self, prompts: Sequence[str], *, batch_size: int = 32, cold_threshold: float = 0.01
    ) -> Utilization:
        """Each expert's share of the corpus's tokens per layer (`mechscope.moe.utilization`)."""
        return await self.analyzer.aio.run(
            moe_tasks.moe_utilization, prompts, batch_size=batch_size, cold_threshold=cold_threshold
        )
