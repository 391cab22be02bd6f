"""The MoE Python fronts: `ExpertRouter` (async, the seed's API) and the `Analyzer` methods, on toy-moe."""

from __future__ import annotations

import asyncio

import pytest

import mechscope as ms
from mechscope.errors import MoEError

PROMPTS = ["The capital of France is", "<call>weather(city=Paris)</call>", "Two plus two is"]


def test_expert_router_gives_the_library_results() -> None:
    lm = ms.load("toy-moe")

    async def main() -> tuple[ms.moe.MoEInfo, ms.moe.RoutingTrace, list[ms.moe.Utilization]]:
        async with await ms.ExpertRouter.from_pretrained("toy-moe") as router:
            trace = await router.trace(PROMPTS[1])
            # two calls at once: serialised on the one model, both complete with the same answer
            both = await asyncio.gather(router.utilization(PROMPTS), router.utilization(PROMPTS))
            return router.info, trace, list(both)

    info, trace, (first, second) = asyncio.run(main())
    assert info == ms.moe.info(lm) and (info.num_experts, info.num_active_experts) == (lm.arch.n_experts, 2)
    assert trace == ms.moe.trace(lm, PROMPTS[1])
    assert first == second == ms.moe.utilization(lm, PROMPTS)


def test_expert_router_refuses_a_dense_model_in_one_line() -> None:
    with pytest.raises(MoEError, match="has no experts") as caught:
        asyncio.run(ms.ExpertRouter.from_pretrained("toy"))
    assert "\n" not in str(caught.value)


def test_analyzer_moe_methods_match_the_functions() -> None:
    analyzer = ms.Analyzer.from_pretrained("toy-moe")
    assert analyzer.moe_info() == ms.moe.info(analyzer.lm)
    assert analyzer.moe_trace(PROMPTS[0], layers=[1]).layers[0].layer == 1
    usage = asyncio.run(analyzer.aio.moe_utilization(PROMPTS, cold_threshold=0.2))
    assert usage == ms.moe.utilization(analyzer.lm, PROMPTS, cold_threshold=0.2)


def test_expert_router_runs_every_analysis_like_the_library() -> None:
    """Each awaited method equals the `mechscope.moe` function on the same model (results are deterministic)."""
    corpus = [*PROMPTS, "<call>time(city=Rome)</call>", "The capital of Spain is Madrid.", "One plus one is two"]

    async def main(router: ms.ExpertRouter) -> dict[str, object]:
        return {
            "specialization": await router.specialization({"calls": corpus[1:4:2], "text": corpus[::2]}),
            "context": await router.context(" is", corpus),
            "pipeline": await router.pipeline(corpus),
            "coactivation": await router.coactivation(corpus, layer_idx=1),
            "predict": await router.predict(corpus * 4, from_layers=[1], to_layers=[1]),
            "vocab": await router.vocab(corpus, layers=[1], top_k=5),
            "compression": await router.analyze_compression(corpus, layer_idx=1),
            "ablate": await router.ablate(PROMPTS[0], layers=[1], target=" Paris"),
            "route": await router.route(PROMPTS[0], force={1: 2}, target=" Paris"),
            "compare": await router.compare(router, corpus),
        }

    async def run() -> tuple[ms.LanguageModel, dict[str, object]]:
        async with await ms.ExpertRouter.from_pretrained("toy-moe") as router:
            return router.lm, await main(router)

    lm, got = asyncio.run(run())
    expected = {
        "specialization": ms.moe.specialization(lm, {"calls": corpus[1:4:2], "text": corpus[::2]}),
        "context": ms.moe.context(lm, " is", corpus),
        "pipeline": ms.moe.pipeline(lm, corpus),
        "coactivation": ms.moe.coactivation(lm, corpus, layer=1),
        "predict": ms.moe.predict(lm, corpus * 4, from_layers=[1], to_layers=[1]),
        "vocab": ms.moe.vocab(lm, prompts=corpus, layers=[1], top_k=5),
        "compression": ms.moe.compression(lm, 1, prompts=corpus),
        "ablate": ms.Analyzer(lm).moe_ablate(PROMPTS[0], layers=[1], target=" Paris"),
        "route": ms.moe.reroute(lm, PROMPTS[0], force={1: 2}, target=" Paris"),
        "compare": ms.moe.compare(lm, lm, corpus),
    }
    for name, value in expected.items():
        assert got[name] == value, name
    assert got["route"].routed_share[1][2] == 1.0  # type: ignore[attr-defined]
    ablation = got["ablate"]
    assert [e.index for e in ablation.effects] == list(range(lm.arch.n_experts))  # type: ignore[attr-defined]
