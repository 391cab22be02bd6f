"""The results of the routing interventions and of routing comparison: plain values, no tensors, no torch.

`RouteResult` (one prompt generated or scored with the routing overridden, next to the clean run) and
`RoutingComparison` with its `LayerComparison` rows (how two checkpoints of one architecture route a corpus).
Each checks its own values.
"""

from __future__ import annotations

from pydantic import BaseModel, model_validator

from mechscope.errors import InputError


class RouteResult(BaseModel):
    """One prompt run with its routing overridden (`mechscope.moe.route.reroute`), and run clean.

    Attributes:
        force: layer -> the expert every token is routed to there (in the first top-k slot).
        forbid: layer -> experts never chosen there.
        zero: layer -> experts whose contribution is removed there; ``renormalised`` says whether the other
            chosen experts' weights were scaled back to the sum they had.
        routed_share: layer (every edited one) -> ``[expert]`` the fraction of the prompt's tokens routed to each
            expert with the override on, measured from the router outputs the experts received.
        target, clean_prob, prob: the scored token and its probability at the last position, clean and
            overridden (None when generating).
        clean_text, text: the greedy continuations, clean and overridden (None when scoring).
    """

    model: str
    prompt: str
    force: dict[int, int]
    forbid: dict[int, list[int]]
    zero: dict[int, list[int]]
    renormalised: bool
    routed_share: dict[int, list[float]]
    target: str | None = None
    clean_prob: float | None = None
    prob: float | None = None
    clean_text: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _scored_or_generated(self) -> RouteResult:
        scored = self.target is not None and self.clean_prob is not None and self.prob is not None
        generated = self.clean_text is not None and self.text is not None
        if scored == generated:
            raise ValueError("a route result is either scored (target and both probabilities) or generated (texts)")
        return self


class LayerComparison(BaseModel):
    """How two models route the same tokens at one MoE layer.

    Attributes:
        top1_agreement: share of tokens whose top-1 expert (the router's first slot) is the same in both.
        jaccard: mean over tokens of ``|A ∩ B| / |A ∪ B|`` of the two top-k expert sets (1: the same sets).
        kl: mean over tokens of ``KL(A ‖ B)`` (nats) between ``softmax(router_logits)`` over all experts of
            model A and of model B, computed in float64.
    """

    layer: int
    top1_agreement: float
    jaccard: float
    kl: float

    @model_validator(mode="after")
    def _in_range(self) -> LayerComparison:
        if not (0.0 <= self.top1_agreement <= 1.0 and 0.0 <= self.jaccard <= 1.0):
            raise ValueError(f"layer {self.layer}: agreement and Jaccard are shares in [0, 1]")
        if not self.kl >= -1e-9:  # also refuses NaN
            raise ValueError(f"layer {self.layer}: a KL divergence is never negative, got {self.kl}")
        return self


class RoutingComparison(BaseModel):
    """Two checkpoints of one architecture (``model_a``, ``model_b``) routing one corpus, per MoE layer."""

    model_a: str
    model_b: str
    family: str
    n_experts: int
    top_k: int
    prompts: int
    tokens: int
    layers: list[LayerComparison]

    def layer(self, index: int) -> LayerComparison:
        """The comparison at MoE layer ``index`` (the model's layer number).

        Raises:
            InputError: the comparison has no such layer.
        """
        for layer in self.layers:
            if layer.layer == index:
                return layer
        raise InputError(f"no comparison for layer {index}; it covers layers {[c.layer for c in self.layers]}")
