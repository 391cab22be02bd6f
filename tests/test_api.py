"""The analyzer front: every analysis on one model, sync and async, serialised, same results as the library."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import mechscope as ms
from mechscope.api import tasks
from mechscope.causal import LogitDiff, activation_patching

CLEAN, CORRUPTED = "The capital of France is", "The capital of Japan is"


@pytest.fixture(scope="module")
def analyzer() -> ms.Analyzer:
    return ms.Analyzer.from_pretrained("toy")


def test_sync_methods_return_what_the_library_returns(analyzer: ms.Analyzer) -> None:
    lm = analyzer.lm
    assert analyzer.lens(CLEAN, top_k=2) == ms.LogitLens(lm).run([CLEAN], top_k=2)
    metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
    assert analyzer.patch(CLEAN, CORRUPTED, correct=" Paris", wrong=" Tokyo") == activation_patching(
        lm, CLEAN, CORRUPTED, metric
    )
    report = analyzer.attention(CLEAN, -1, head=0)
    assert report.layer == lm.arch.n_layers - 1 and len(report.patterns) == lm.arch.n_heads
    assert analyzer.doctor().passed


def test_async_calls_match_sync_and_never_overlap(analyzer: ms.Analyzer) -> None:
    active, overlaps = [0], [0]
    guard = threading.Lock()

    def slow(lm: ms.LanguageModel, tag: int) -> int:
        with guard:
            active[0] += 1
            overlaps[0] = max(overlaps[0], active[0])
        time.sleep(0.02)  # long enough for another worker thread to start if nothing serialised them
        with guard:
            active[0] -= 1
        return tag

    async def main() -> tuple[list[int], list[ms.LensResult]]:
        async with analyzer.aio as aio:
            tags = await asyncio.gather(*(aio.run(slow, i) for i in range(6)))
            lens = await aio.lens(CLEAN, top_k=2)
        return list(tags), lens

    tags, lens = asyncio.run(main())
    assert tags == list(range(6)) and overlaps[0] == 1
    assert lens == analyzer.lens(CLEAN, top_k=2)


def test_every_cli_analysis_has_a_method() -> None:
    public = [name for name in vars(tasks) if not name.startswith("_") and callable(vars(tasks)[name])]
    analyses = [name for name in public if getattr(vars(tasks)[name], "__module__", "") == tasks.__name__]
    assert {"lens", "attention", "heads", "patch", "ablate", "steer", "directions", "doctor"} <= set(analyses)
    for name in analyses:
        assert callable(getattr(ms.Analyzer, name)) and asyncio.iscoroutinefunction(getattr(ms.AsyncAnalyzer, name))


def test_an_analyzer_needs_a_model_or_a_name() -> None:
    with pytest.raises(ms.MechscopeError, match="loaded model or a name"):
        ms.Analyzer()
