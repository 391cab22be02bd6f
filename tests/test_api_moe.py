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
