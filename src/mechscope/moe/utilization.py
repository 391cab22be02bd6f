"""Expert utilization over a corpus: how many tokens each expert gets, and the family's load-balancing loss.

Everything is accumulated from streamed sums (`mechscope.moe.routing.routing`, one batch at a time), so a
corpus of any size costs one batch of memory. Counts come from the router's own choice (``expert_index``).
The load-balancing loss is transformers' ``load_balancing_loss_func``, which every MoE family of the map
(Mixtral, Qwen2/3-MoE, OLMoE, GPT-OSS, Granite-MoE) defines identically and calls with the attention mask:
``n_experts * sum_e f_e * P_e``, where ``f_e`` is the fraction of top-k slots that go to expert e when the
softmax probabilities are ranked (as that function ranks them, in the logits' dtype) and ``P_e`` the mean
softmax probability of e, both pooled over every MoE layer and every real token. Its sums are linear, so
adding them batch by batch gives the value of the whole corpus at once.

Example:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = utilization(lm, ["The capital of France is", "Two plus two is"])
    >>> result.tokens == sum(len(lm.tokenizer(p)["input_ids"]) for p in ["The capital of France is", "Two plus two is"])
    True
    >>> round(sum(result.layer(0).share), 6) == lm.arch.top_k
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mechscope.errors import InputError
from mechscope.moe.info import require_moe
from mechscope.moe.results import LayerUtilization, Utilization
from mechscope.moe.routing import RoutingBatch, routing

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel


def utilization(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int | None = None,
    cold_threshold: float = 0.01,
    progress: bool = False,
) -> Utilization:
    """Count, per MoE layer, the tokens each expert receives over ``prompts`` (padding never counts).

    Args:
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        cold_threshold: an expert whose share (fraction of tokens routed to it) is below this is cold.
        progress: a progress bar on stderr (only on a terminal).

    Raises:
        MoEError: the model has no experts.
        InputError: the corpus is empty, a prompt is empty or too long, or the threshold is not in [0, 1].
    """
    require_moe(lm)
    if not (isinstance(cold_threshold, int | float) and 0 <= cold_threshold <= 1):
        raise InputError(f"the cold threshold is a share of tokens in [0, 1], got {cold_threshold}")
    if isinstance(prompts, str):
        raise InputError("utilization takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    sums = _Sums(lm)
    for batch in routing(
        lm, prompts, batch_size=batch_size, max_tokens=max_tokens, with_logits=True, progress=progress
    ):
        sums.add(batch)
    coef = getattr(lm.model.config, "router_aux_loss_coef", None)
    return Utilization(
        model=lm.source,
        family=lm.arch.family,
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        prompts=len(prompts),
        tokens=sums.tokens,
        cold_threshold=float(cold_threshold),
        load_balancing_loss=sums.pooled_loss(),
        aux_loss_coef=None if coef is None else float(coef),
        layers=[sums.layer(row, layer, cold_threshold) for row, layer in enumerate(lm.arch.moe_layers)],
    )


def balance_sums(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """``(slots, probability)``, each ``[expert]`` float64: the two sums of transformers' load-balancing loss.

    ``logits`` are one layer's router logits of real tokens, ``[tokens, expert]``. As in
    ``load_balancing_loss_func``: the softmax is taken in the logits' own dtype, its top-k ranks the experts
    (``slots`` counts them), and ``probability`` sums the probabilities in float32.
    """
    import torch

    probs = torch.softmax(logits, dim=-1)
    _, chosen = torch.topk(probs, top_k, dim=-1)
    slots = torch.bincount(chosen.reshape(-1), minlength=logits.shape[-1]).double()
    return slots, probs.float().sum(dim=0).double()


def balance_loss(slots: Tensor, probability: Tensor, rows: int) -> float:
    """``n_experts * sum_e (slots_e / rows) * (probability_e / rows)``, the load-balancing loss from its sums."""
    if rows == 0:
        return float("nan")
    return float(slots.shape[-1] * ((slots / rows) * (probability / rows)).sum())


class _Sums:
    """Running sums over the batches: routed counts, and the load-balancing loss's two sums, per MoE layer."""

    def __init__(self, lm: LanguageModel) -> None:
        import torch

        self.layers = list(lm.arch.moe_layers)
        self.top_k = lm.arch.top_k
        shape = (len(self.layers), lm.arch.n_experts)
        self.counts = torch.zeros(shape, dtype=torch.long)
        self.slots = torch.zeros(shape, dtype=torch.float64)
        self.probability = torch.zeros(shape, dtype=torch.float64)
        self.tokens = 0

    def add(self, batch: RoutingBatch) -> None:
        import torch

        assert batch.router_logits is not None
        n = self.counts.shape[1]
        for row, layer in enumerate(self.layers):
            chosen = batch.expert_index[layer].reshape(-1)
            self.counts[row] += torch.bincount(chosen, minlength=n).cpu()
            slots, probability = balance_sums(batch.router_logits[layer], self.top_k)
            self.slots[row] += slots.cpu()
            self.probability[row] += probability.cpu()
        self.tokens += batch.tokens

    def pooled_loss(self) -> float:
        """The loss over every layer at once (transformers' definition: the sums pooled over layers)."""
        return balance_loss(self.slots.sum(dim=0), self.probability.sum(dim=0), self.tokens * len(self.layers))

    def layer(self, row: int, layer: int, cold_threshold: float) -> LayerUtilization:
        counts = [int(c) for c in self.counts[row].tolist()]
        share = [c / self.tokens for c in counts]
        entropy = _entropy(counts)
        n = len(counts)
        return LayerUtilization(
            layer=layer,
            counts=counts,
            share=share,
            load_entropy=entropy,
            load_entropy_normalised=entropy / math.log(n) if n > 1 else 1.0,
            load_balancing_loss=balance_loss(self.slots[row], self.probability[row], self.tokens),
            cold=[e for e, s in enumerate(share) if s < cold_threshold],
        )


def _entropy(counts: list[int]) -> float:
    """Entropy (nats) of the distribution ``counts / sum(counts)`` (0 log 0 = 0)."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c)
