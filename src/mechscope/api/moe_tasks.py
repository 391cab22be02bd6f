"""The mixture-of-experts analyses as functions of a loaded model, for `Analyzer` and `ExpertRouter`.

Thin calls into `mechscope.moe` with the CLI's defaults, so the Python fronts and the CLI compute the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from mechscope.core.lm import LanguageModel
from mechscope.moe.results import MoEInfo, RoutingTrace, Utilization


def moe_info(lm: LanguageModel) -> MoEInfo:
    """How the model routes: experts, top-k, MoE and dense layers, shared experts, the router's rule."""
    from mechscope.moe.info import moe_info as describe

    return describe(lm)


def moe_trace(lm: LanguageModel, prompt: str, *, layers: Sequence[int] | None = None) -> RoutingTrace:
    """One prompt's routing on each MoE layer, equal to the router modules' own outputs."""
    from mechscope.moe.trace import trace

    return trace(lm, prompt, layers=layers)


def moe_utilization(
    lm: LanguageModel, prompts: Sequence[str], *, batch_size: int = 32, cold_threshold: float = 0.01
) -> Utilization:
    """Each expert's share of a corpus's tokens per MoE layer, with the family's load-balancing loss."""
    from mechscope.moe.utilization import utilization

    return utilization(lm, list(prompts), batch_size=batch_size, cold_threshold=cold_threshold)
