"""The mixture-of-experts analyses as functions of a loaded model, for `Analyzer` and `ExpertRouter`.

Thin calls into `mechscope.moe` with the CLI's defaults, so the Python fronts and the CLI compute the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from mechscope import moe
from mechscope.causal.results import AblationResult
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


def moe_ablate(
    lm: LanguageModel,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    experts: Sequence[int] | None = None,
    renormalise: bool = False,
    target: str | None = None,
    criterion: str | None = None,
    max_new_tokens: int = 20,
    progress: bool = False,
) -> AblationResult:
    """Zero each of ``experts`` (default all) of each MoE layer in turn, one batched pass per layer.

    Measured by the probability of ``target`` or by a text ``criterion`` (``contains:<text>``,
    ``regex:<pattern>``, ``function_call``), as `mechscope ablate` is; ``renormalise`` scales the other chosen
    experts' weights back to their sum (`mechscope.moe.interventions`).
    """
    from mechscope.api.tasks import ablate
    from mechscope.moe.info import moe_layers
    from mechscope.moe.interventions import expert_ablation

    return ablate(
        lm,
        prompt,
        component="expert",
        target=target,
        criterion=criterion,
        layers=moe_layers(lm, layers),
        indices=experts,
        ablator=expert_ablation(renormalise=renormalise),
        max_new_tokens=max_new_tokens,
        progress=progress,
    )


# The other analyses take the model first and have the CLI's defaults already: bound as they are.
moe_route = moe.reroute
moe_compare = moe.compare
moe_specialization = moe.specialization
moe_context = moe.context
moe_pipeline = moe.pipeline
moe_coactivation = moe.coactivation
moe_predict = moe.predict
moe_vocab = moe.vocab
moe_compression = moe.compression
