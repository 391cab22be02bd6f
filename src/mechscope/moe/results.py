"""The results of the MoE analyses: plain values (ints, floats, token strings), no tensors.

`MoEInfo` (how a model routes), `RoutingTrace` (one prompt's routing, token by token, on each MoE layer) and
`Utilization` (how a corpus's tokens spread over the experts). Each checks its own shapes; nothing here
imports torch.

Axis names: ``token`` (a real token of the prompt, in order), ``k`` (the router's top-k slots, in the
router's own order: transformers' ``topk`` order, largest first), ``expert`` (0 .. n_experts - 1).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, model_validator

from mechscope.errors import InputError
from mechscope.models.families import RouterRule


class MoEInfo(BaseModel):
    """How a mixture-of-experts model routes, from its family row and its config.

    Attributes:
        moe_layers, dense_layers: which layers have a router, and which a plain MLP (Qwen2/3-MoE can mix them).
        shared_experts: experts every token goes through besides the routed ones (per MoE layer).
        shared_expert_gated: whether a sigmoid gate scales the shared expert's output (Qwen2-MoE).
        rule: the family's `RouterRule` (None for a discovered family, whose rule mechscope does not know).
        renormalised: whether the top-k weights are divided by their sum (``softmax_topk`` only).
        router_rule: the rule in words, e.g. ``"softmax over all experts, then top-k, renormalised to sum to 1"``.
        packed_experts: experts kept in 3-D tensors in one module (transformers 5) rather than one module each.
        aux_loss_coef: the config's ``router_aux_loss_coef`` (the load-balancing loss weight in training).
    """

    model: str
    family: str
    n_layers: int
    n_experts: int
    top_k: int
    moe_layers: list[int]
    dense_layers: list[int]
    shared_experts: int
    shared_expert_gated: bool
    rule: RouterRule | None
    renormalised: bool | None
    router_rule: str
    packed_experts: bool | None
    aux_loss_coef: float | None

    @property
    def num_experts(self) -> int:
        """``n_experts`` under the name MLX-introspection users know."""
        return self.n_experts

    @property
    def num_active_experts(self) -> int:
        """``top_k``: experts each token is routed to (shared experts not counted)."""
        return self.top_k


class LayerRouting(BaseModel):
    """One MoE layer's routing of every token of one prompt.

    Attributes:
        experts: ``[token][k]`` the chosen experts, in the router's own order.
        weights: ``[token][k]`` their routing weights, exactly as the router returned them.
        entropy: ``[token]`` entropy (nats) of ``softmax(router_logits)`` over all experts, in float32.
        logits: ``[token][expert]`` the router's logits, when asked for.
    """

    layer: int
    experts: list[list[int]]
    weights: list[list[float]]
    entropy: list[float]
    logits: list[list[float]] | None = None


class RoutingTrace(BaseModel):
    """One prompt's routing on each MoE layer, equal bit for bit to the router modules' own outputs.

    Attributes:
        tokens: the prompt's tokens, as text.
        weight_dtype, logit_dtype: the dtypes the router returned its weights and logits in (the floats here
            are those values exactly; ``torch.tensor(weights, dtype=...)`` rebuilds them bit for bit).
    """

    prompt: str
    tokens: list[str]
    n_experts: int
    top_k: int
    weight_dtype: str
    logit_dtype: str
    layers: list[LayerRouting]

    @model_validator(mode="after")
    def _shapes_agree(self) -> RoutingTrace:
        n = len(self.tokens)
        for routing in self.layers:
            rows = (routing.experts, routing.weights)
            if any(len(r) != n for r in rows) or len(routing.entropy) != n:
                raise ValueError(f"layer {routing.layer}: routing rows do not match the {n} tokens")
            if any(len(slots) != self.top_k for r in rows for slots in r):
                raise ValueError(f"layer {routing.layer}: every token needs {self.top_k} experts and weights")
            if routing.logits is not None and (
                len(routing.logits) != n or any(len(row) != self.n_experts for row in routing.logits)
            ):
                raise ValueError(f"layer {routing.layer}: logits must be [{n} tokens][{self.n_experts} experts]")
        return self

    def layer(self, index: int) -> LayerRouting:
        """The routing of MoE layer ``index`` (the model's layer number).

        Raises:
            InputError: the trace has no such layer.
        """
        for routing in self.layers:
            if routing.layer == index:
                return routing
        raise InputError(f"the trace has no layer {index}; it covers layers {[r.layer for r in self.layers]}")


class LayerUtilization(BaseModel):
    """How one MoE layer spread a corpus's tokens over its experts.

    Attributes:
        counts: ``[expert]`` top-k slots the expert received (a token routed to it counts once).
        share: ``[expert]`` ``counts / tokens``, the fraction of tokens routed to the expert; the shares sum
            to ``top_k``, and a perfectly balanced layer gives every expert ``top_k / n_experts``.
        load_entropy: entropy (nats) of the load distribution ``counts / sum(counts)``.
        load_entropy_normalised: ``load_entropy / log(n_experts)``: 1 is perfectly balanced, 0 one expert only.
        load_balancing_loss: transformers' load-balancing loss of this layer alone (see `Utilization`).
        cold: experts whose share is below the threshold, in expert order.
    """

    layer: int
    counts: list[int]
    share: list[float]
    load_entropy: float
    load_entropy_normalised: float
    load_balancing_loss: float
    cold: list[int]


class Utilization(BaseModel):
    """Expert utilization over a corpus, per MoE layer, with the family's load-balancing loss.

    Attributes:
        prompts, tokens: how many prompts ran, and their real (non-padding) tokens.
        cold_threshold: an expert with a share below this is listed as cold.
        load_balancing_loss: the value transformers' ``load_balancing_loss_func`` gives for the whole corpus
            with its padding masked out (what ``model(..., output_router_logits=True).aux_loss`` is on one
            batch): ``n_experts * sum_e f_e * P_e``, with ``f_e`` the fraction of top-k slots (of softmax
            probabilities, as that function ranks them) and ``P_e`` the mean router probability of expert e,
            both pooled over every MoE layer and token. A balanced router gives about ``top_k``.
        aux_loss_coef: the weight the family gives that loss in training (``router_aux_loss_coef``).
    """

    model: str
    family: str
    n_experts: int
    top_k: int
    prompts: int
    tokens: int
    cold_threshold: float
    load_balancing_loss: float
    aux_loss_coef: float | None
    layers: list[LayerUtilization]

    @model_validator(mode="after")
    def _counts_add_up(self) -> Utilization:
        for layer in self.layers:
            if len(layer.counts) != self.n_experts or len(layer.share) != self.n_experts:
                raise ValueError(f"layer {layer.layer}: counts and shares need {self.n_experts} experts")
            if sum(layer.counts) != self.tokens * self.top_k:
                raise ValueError(f"layer {layer.layer}: counts must sum to tokens x top_k = {self.tokens * self.top_k}")
            if not math.isclose(sum(layer.share), self.top_k, rel_tol=1e-6):
                raise ValueError(f"layer {layer.layer}: shares must sum to top_k = {self.top_k}")
        return self

    def layer(self, index: int) -> LayerUtilization:
        """The utilization of MoE layer ``index`` (the model's layer number).

        Raises:
            InputError: the result has no such layer.
        """
        for layer in self.layers:
            if layer.layer == index:
                return layer
        raise InputError(f"no utilization for layer {index}; it covers layers {[u.layer for u in self.layers]}")
