"""Compare the routing of two checkpoints of one architecture (a base and its fine-tune) on one corpus.

Both models stream the corpus through `mechscope.moe.routing` with their router logits, batch by batch in
lockstep: the prompts are tokenized identically (checked), so both plan the same batches and each batch's
tokens line up one to one. Per MoE layer, over every real token: the share of tokens with the same top-1
expert, the mean Jaccard index of the two top-k sets, and the mean ``KL(A ‖ B)`` in nats between the
routing distributions ``softmax(router_logits)`` over all experts (in float64; for GPT-OSS and Granite, whose
rule softmaxes only the top k, this is still the softmax over every expert's logit). Only running sums are
kept, so memory stays at one batch per model.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> same = compare(lm, lm, ["The capital of France is", "Two plus two is"])
    >>> same.layer(1).top1_agreement, same.layer(1).jaccard, same.layer(1).kl
    (1.0, 1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mechscope.errors import InputError
from mechscope.moe.info import require_moe
from mechscope.moe.intervention_results import LayerComparison, RoutingComparison
from mechscope.moe.routing import RoutingBatch, routing

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel


def compare(
    lm_a: LanguageModel,
    lm_b: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    progress: bool = False,
) -> RoutingComparison:
    """Per MoE layer, how ``lm_a`` and ``lm_b`` route the same tokens of ``prompts`` (see the module docstring).

    Examples:
        A "fine-tune" whose layer-3 router is flatter (its weights halved): the choices agree, the KL does not.

        >>> import copy, torch
        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> tuned = ms.wrap(copy.deepcopy(lm.model), lm.tokenizer)
        >>> with torch.no_grad():
        ...     _ = tuned.arch.part("router", 3).weight.mul_(0.5)
        >>> result = compare(lm, tuned, ["The capital of France is Paris.", "<call>time(city=Bern)</call>"])
        >>> [(row.layer, row.top1_agreement, row.jaccard, round(row.kl, 3)) for row in result.layers]
        [(0, 1.0, 1.0, 0.0), (1, 1.0, 1.0, 0.0), (2, 1.0, 1.0, 0.0), (3, 1.0, 1.0, 0.082)]

    Raises:
        MoEError: a model has no experts.
        InputError: the models differ in experts, top-k or MoE layers; the corpus is empty; a prompt is
            empty or tokenizes differently in the two models.
    """
    require_moe(lm_a)
    require_moe(lm_b)
    _same_architecture(lm_a, lm_b)
    if isinstance(prompts, str):
        raise InputError("compare takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    stream_a = routing(lm_a, prompts, batch_size=batch_size, max_tokens=max_tokens, with_logits=True, progress=progress)
    stream_b = routing(lm_b, prompts, batch_size=batch_size, max_tokens=max_tokens, with_logits=True)
    sums = {layer: [0.0, 0.0, 0.0] for layer in lm_a.arch.moe_layers}
    tokens = 0
    for batch_a, batch_b in zip(stream_a, stream_b, strict=True):
        # Routing is compared token by token: both tokenizers must split every prompt alike (then both plan the
        # same batches, bucketed by length).
        same = batch_a.rows.tolist() == batch_b.rows.tolist() and batch_a.lengths.tolist() == batch_b.lengths.tolist()
        if not same or not bool((batch_a.input_ids.cpu() == batch_b.input_ids.cpu()).all()):
            raise InputError(
                "the two tokenizers split the corpus differently; routing is compared token by token, so both "
                "models need the same tokenizer"
            )
        for layer, row in sums.items():
            for i, value in enumerate(_layer_sums(batch_a, batch_b, layer)):
                row[i] += value
        tokens += batch_a.tokens
    return RoutingComparison(
        model_a=lm_a.source,
        model_b=lm_b.source,
        family=lm_a.arch.family,
        n_experts=lm_a.arch.n_experts,
        top_k=lm_a.arch.top_k,
        prompts=len(prompts),
        tokens=tokens,
        layers=[
            LayerComparison(layer=layer, top1_agreement=top1 / tokens, jaccard=jaccard / tokens, kl=kl / tokens)
            for layer, (top1, jaccard, kl) in sums.items()
        ],
    )


def _same_architecture(lm_a: LanguageModel, lm_b: LanguageModel) -> None:
    """Refuse two models that do not route over the same experts and layers, in one line."""

    def shape(lm: LanguageModel) -> tuple[int, int, list[int]]:
        return lm.arch.n_experts, lm.arch.top_k, list(lm.arch.moe_layers)

    if shape(lm_a) != shape(lm_b):
        (na, ka, la), (nb, kb, lb) = shape(lm_a), shape(lm_b)
        raise InputError(
            f"the models route differently: {lm_a.source} has {na} experts, top-{ka} on layers {la}; "
            f"{lm_b.source} has {nb} experts, top-{kb} on layers {lb}; compare needs two checkpoints of one "
            "architecture"
        )


def _layer_sums(a: RoutingBatch, b: RoutingBatch, layer: int) -> tuple[float, float, float]:
    """Over one batch's tokens at ``layer``: top-1 agreements, the sum of Jaccard indices and of KL(A ‖ B)."""

    index_a = a.expert_index[layer]
    index_b = b.expert_index[layer].to(index_a.device)
    top1 = float((index_a[:, 0] == index_b[:, 0]).sum())
    # The router's top-k never repeats an expert, so the sets' sizes are k each.
    shared = (index_a[:, :, None] == index_b[:, None, :]).any(dim=-1).sum(dim=-1).double()
    jaccard = float((shared / (2 * index_a.shape[-1] - shared)).sum())
    assert a.router_logits is not None and b.router_logits is not None
    kl = _kl(a.router_logits[layer], b.router_logits[layer].to(index_a.device))
    return top1, jaccard, float(kl.sum())


def _kl(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """``[tokens]``: ``KL(softmax(a) ‖ softmax(b))`` in nats, in float64 (0 log 0 = 0)."""
    import torch

    log_p, log_q = logits_a.double().log_softmax(-1), logits_b.double().log_softmax(-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    kl: Tensor = terms.sum(dim=-1)
    return kl
