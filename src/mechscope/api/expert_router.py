"""`ExpertRouter`: the async mixture-of-experts front that MLX-introspection users know, on any HF MoE model.

    async with await ExpertRouter.from_pretrained("toy-moe") as router:
        router.info.num_experts, router.info.num_active_experts
        usage = await router.utilization(prompts)
        analysis = await router.analyze_compression(prompts, layer_idx=2)
        len(analysis.merge_candidates or [])

Each method awaits one function of `mechscope.api.moe_tasks` run by an `Analyzer` in a worker thread (one
call at a time on the model), so an event loop stays responsive while the model computes; results are the
library's pydantic models. ``from_pretrained`` loads the model (in a thread) and checks that it has
experts: a dense model raises `mechscope.errors.MoEError` there, in one line.

Examples:
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
from mechscope.causal.results import AblationResult
from mechscope.core.lm import LanguageModel
from mechscope.moe.compression_results import Compression
from mechscope.moe.intervention_results import RouteResult, RoutingComparison
from mechscope.moe.path_results import Coactivation, Pipeline, RoutingPrediction
from mechscope.moe.results import MoEInfo, RoutingTrace, Utilization
from mechscope.moe.specialization_results import ContextRouting, Specialization
from mechscope.moe.vocab_results import VocabContribution


class ExpertRouter:
    """One MoE model and its routing analyses, awaited; build it with `from_pretrained` or from an `Analyzer`.

    Examples:
        >>> import asyncio, mechscope as ms
        >>> async def main():
        ...     async with await ms.ExpertRouter.from_pretrained("toy-moe") as router:
        ...         usage = await router.utilization(["The capital of France is", "Two plus two is"])
        ...         return usage.layers[1].counts  # tokens routed to each of layer 1's four experts
        >>> asyncio.run(main())
        [18, 6, 9, 3]
    """

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

    # The analyses below take `mechscope.moe`'s keyword options (``batch_size``, ``layers``, ...) as they are.

    async def specialization(self, domains: Any = None, **options: Any) -> Specialization:
        """Domain, vocabulary and token-type specialization per expert (`mechscope.moe.specialization`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_specialization, domains, **options)

    async def context(self, token: str, prompts: Sequence[str], **options: Any) -> ContextRouting:
        """How one token routes across its contexts in ``prompts`` (`mechscope.moe.context`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_context, token, prompts, **options)

    async def pipeline(self, prompts: Sequence[str], **options: Any) -> Pipeline:
        """Expert transitions between layers and the frequent full paths (`mechscope.moe.pipeline`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_pipeline, prompts, **options)

    async def coactivation(self, prompts: Sequence[str], layer_idx: int, **options: Any) -> Coactivation:
        """``P(j | i)`` over all pairs of experts chosen together at one layer (`mechscope.moe.coactivation`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_coactivation, prompts, layer=layer_idx, **options)

    async def predict(self, prompts: Sequence[str], **options: Any) -> RoutingPrediction:
        """Linear probes from the residual to later layers' routing (`mechscope.moe.predict`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_predict, prompts, **options)

    async def vocab(self, prompts: Sequence[str] | None = None, **options: Any) -> VocabContribution:
        """The tokens each expert promotes and suppresses, from weights and a corpus (`mechscope.moe.vocab`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_vocab, prompts=prompts, **options)

    async def analyze_compression(self, prompts: Sequence[str] | None, layer_idx: int, **options: Any) -> Compression:
        """Expert similarity, merge candidates, cold experts and the SVD overlay of one layer, measured.

        `mechscope.moe.compression`; ``verify=`` applies edits to the layer in memory and measures them.
        """
        return await self.analyzer.aio.run(moe_tasks.moe_compression, layer_idx, prompts=prompts, **options)

    async def ablate(self, prompt: str, **options: Any) -> AblationResult:
        """Zero each expert of each (chosen) layer in turn, one batched pass per layer (`moe_tasks.moe_ablate`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_ablate, prompt, **options)

    async def route(self, prompt: str, **options: Any) -> RouteResult:
        """Score or generate with experts forced, forbidden or zeroed, next to the clean run (`moe.reroute`)."""
        return await self.analyzer.aio.run(moe_tasks.moe_route, prompt, **options)

    async def compare(self, other: ExpertRouter, prompts: Sequence[str], **options: Any) -> RoutingComparison:
        """This model's routing against ``other``'s on one corpus (`mechscope.moe.compare`).

        Runs on this router's worker; ``other``'s model must not be in use elsewhere meanwhile.
        """
        return await self.analyzer.aio.run(moe_tasks.moe_compare, other.lm, prompts, **options)
