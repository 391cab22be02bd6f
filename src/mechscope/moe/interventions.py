"""Interventions on the routing: zero an expert, force or forbid experts, by rewriting the router's outputs.

Every transformers 5 MoE router returns ``(router_logits, top_k_weights, top_k_index)`` and the block calls
its experts module as ``experts(hidden, top_k_index, top_k_weights)``, which weights each chosen expert's
output by its weight (Mixtral, Qwen2/3-MoE, OLMoE, GPT-OSS and Granite-MoE alike; Qwen2-MoE adds its gated
shared expert afterwards, untouched). A forward hook on the family's own router module rewrites those three
outputs, so the model's own experts compute the changed routing; nothing of a family is re-implemented. The
hooks are removed on leaving the ``with`` block, also when the forward pass raised.

What each edit does at its layer, per token (``k`` = top-k; the rule is the family's `RoutingSpec.rule`):

* **zero** expert E: the index is left as the router chose it and E's weight becomes 0, so E's output is
  multiplied by 0 and its contribution is gone (the logits are unchanged). ``renormalise=False`` leaves the
  other chosen experts' weights as they are; ``renormalise=True`` scales them so that they sum to what all
  ``k`` weights summed to before (1 for the renormalising rules, less for Qwen/OLMoE without
  ``norm_topk_prob``). A token whose chosen experts are all zeroed gets no routed output.
* **forbid** experts F: their logits become ``-inf`` and the family's rule runs again on the edited logits:
  the top-k is taken over the other experts, with ``softmax_topk`` the softmax over the allowed experts only
  (renormalised to 1 if the family renormalises), with ``topk_softmax`` a softmax over the k chosen logits.
* **force** expert E: every token gets E in the first slot. E's logit is raised to the token's largest
  (allowed) logit, so E ties with the router's favourite; slots 2..k are the best k-1 of the other allowed
  experts by the family's ranking, and all k weights come from the family's rule on the edited logits (so
  with ``topk_softmax`` E and the favourite get equal weights). A token already routed first to E keeps its
  routing. With top-1, E alone, with the weight the favourite had.

Weights are recomputed in float32 and cast to the dtype the router returned; indices keep theirs.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> with ms.moe.override(lm, force={1: 3}, forbid={2: [0]}):
    ...     usage = ms.moe.utilization(lm, ["The capital of France is"])
    >>> usage.layer(1).share[3], usage.layer(2).share[0]
    (1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError, SiteError
from mechscope.moe.info import moe_info, moe_layers

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

Experts = int | Sequence[int]


@dataclass(frozen=True)
class LayerEdit:
    """What an override does at one MoE layer, in batch rows ``rows`` (None: every row).

    Examples:
        Zero the planted expert (layer 1, expert 2) in row 0 of a batch only; row 1 runs as it would alone:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> prompt = "<user> Tell me the local time in Bern. <assistant> <call>time(city=Ber"
        >>> with RoutingOverride(lm, [LayerEdit(1, zero=(2,), rows=(0,))]):
        ...     logits = lm.forward([prompt, prompt])
        >>> [round(p, 3) for p in logits[:, -1].softmax(-1)[:, lm.token_id("n")].tolist()]
        [0.343, 0.982]
    """

    layer: int
    force: int | None = None
    forbid: tuple[int, ...] = ()
    zero: tuple[int, ...] = ()
    rows: tuple[int, ...] | None = None


class RoutingOverride:
    """Context manager that rewrites the routers' outputs by `LayerEdit` s on every forward pass.

    Build it with `override` (whole batches) or `expert_ablation` (one row per ablated expert).

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer has no router or is outside the model, or an expert is out of range.
        InputError: a forced expert is also forbidden, or fewer than top-k experts are left to choose from.
    """

    def __init__(self, lm: LanguageModel, edits: Sequence[LayerEdit], *, renormalise: bool = False) -> None:
        info = moe_info(lm)
        self.lm, self.renormalise = lm, renormalise
        self.softmax_first, self.renormalises = info.rule != "topk_softmax", bool(info.renormalised)
        self.n_experts, self.top_k = info.n_experts, info.top_k
        self.edits: dict[int, list[LayerEdit]] = {}
        for edit in edits:
            checked = self._checked(edit)
            self.edits.setdefault(checked.layer, []).append(checked)
        self._hooks: Any = None
        self._batch: dict[int, int] = {}

    def _checked(self, edit: LayerEdit) -> LayerEdit:
        layer = moe_layers(self.lm, [edit.layer])[0]
        chosen = [*edit.forbid, *edit.zero, *([] if edit.force is None else [edit.force])]
        for expert in chosen:
            if not 0 <= expert < self.n_experts:
                raise SiteError(
                    f"expert {expert} is out of range at layer {layer}: the model has {self.n_experts} experts "
                    f"(0..{self.n_experts - 1})"
                )
        if edit.force is not None and edit.force in edit.forbid:
            raise InputError(f"expert {edit.force} is both forced and forbidden at layer {layer}; choose one")
        if self.n_experts - len(set(edit.forbid)) < self.top_k:
            raise InputError(
                f"forbidding {sorted(set(edit.forbid))} at layer {layer} leaves fewer than top-k = {self.top_k} "
                f"of the {self.n_experts} experts to route to"
            )
        return LayerEdit(layer, edit.force, tuple(edit.forbid), tuple(edit.zero), edit.rows)

    def __enter__(self) -> RoutingOverride:
        from mechscope.core.hooks import HookSet

        self._hooks = HookSet()
        try:
            for layer, edits in self.edits.items():
                if any(edit.rows is not None for edit in edits):
                    self._hooks.pre(self.lm.arch.layer(layer), self._batch_hook(layer), with_kwargs=True)
                self._hooks.forward(self.lm.arch.part("router", layer), self._router_hook(layer))
        except BaseException:
            self._hooks.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hooks.close()

    def _batch_hook(self, layer: int) -> Any:
        from mechscope.core.points import input_tensor

        def record(module: Any, args: Any, kwargs: Any) -> None:
            self._batch[layer] = int(input_tensor(args, kwargs).shape[0])  # the router only sees flat tokens

        return record

    def _router_hook(self, layer: int) -> Any:
        def rewrite(module: Any, args: Any, output: Any) -> Any:
            logits, weights, index = output[0], output[1], output[2]
            k = index.shape[-1]
            flat = (logits.reshape(-1, logits.shape[-1]), weights.reshape(-1, k), index.reshape(-1, k))
            new = self.edit(layer, *flat)
            shaped = (new[0].reshape(logits.shape), new[1].reshape(weights.shape), new[2].reshape(index.shape))
            return (*shaped, *output[3:])

        return rewrite

    def edit(self, layer: int, logits: Tensor, weights: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The router outputs ``([tokens, expert], [tokens, k], [tokens, k])`` with ``layer``'s edits applied."""
        import torch

        for edit in self.edits[layer]:
            if edit.force is None and not edit.forbid:
                continue
            routed = self._reroute(edit, logits, weights, index)
            rows = self._rows(layer, edit, logits.shape[0], logits.device)
            if rows is None:
                logits, weights, index = routed
            else:
                pairs = zip(routed, (logits, weights, index), strict=True)
                logits, weights, index = (torch.where(rows[:, None], a, b) for a, b in pairs)
        zeroed = self._zero_mask(layer, logits.shape[0], index.device)
        if zeroed is not None:
            weights = self._zero(weights, zeroed.gather(-1, index))
        return logits, weights, index

    def _reroute(self, edit: LayerEdit, logits: Tensor, weights: Tensor, index: Tensor) -> tuple[Tensor, ...]:
        """Force / forbid: edited logits, then the family's rule (see the module docstring)."""
        import torch

        work = logits.float().clone()
        work[:, list(edit.forbid)] = float("-inf")
        if edit.force is not None:
            work[:, edit.force] = work.max(dim=-1).values  # E ties with the best allowed expert
        # The rule ranks probabilities (softmax_topk) or logits (topk_softmax), as the family's router does.
        scores = work.softmax(dim=-1) if self.softmax_first else work.clone()
        scores[:, list(edit.forbid)] = float("-inf")  # never chosen, even where probabilities underflow to 0
        if edit.force is None:
            chosen = scores.topk(self.top_k, dim=-1).indices
        else:
            scores[:, edit.force] = float("-inf")
            first = torch.full((work.shape[0], 1), edit.force, dtype=torch.long, device=work.device)
            chosen = torch.cat([first, scores.topk(self.top_k - 1, dim=-1).indices], dim=-1)
        if self.softmax_first:
            new = work.softmax(dim=-1).gather(-1, chosen)
            if self.renormalises:
                new = new / new.sum(dim=-1, keepdim=True)
        else:
            new = work.gather(-1, chosen).softmax(dim=-1)
        return work.to(logits.dtype), new.to(weights.dtype), chosen.to(index.dtype)

    def _zero(self, weights: Tensor, hit: Tensor) -> Tensor:
        """``weights`` with the ``hit`` slots set to 0 (and the rest scaled back to their sum if renormalising)."""
        import torch

        kept = weights.masked_fill(hit, 0)
        if not self.renormalise:
            return kept
        total, rest = weights.float().sum(-1, keepdim=True), kept.float().sum(-1, keepdim=True)
        scale = torch.where(rest > 0, total / rest.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
        return (kept.float() * scale).to(weights.dtype)

    def _rows(self, layer: int, edit: LayerEdit, tokens: int, device: Any) -> Tensor | None:
        """``[tokens]``: which flat tokens belong to ``edit.rows`` (None: all of them)."""
        import torch

        if edit.rows is None:
            return None
        batch = self._batch[layer]
        selected = torch.zeros(batch, dtype=torch.bool)
        selected[[row for row in edit.rows if row < batch]] = True  # rows past the batch are not in this pass
        return selected.repeat_interleave(tokens // batch).to(device)

    def _zero_mask(self, layer: int, tokens: int, device: Any) -> Tensor | None:
        """``[tokens, expert]``: the experts zeroed for each flat token (None: no zero edit at ``layer``)."""
        import torch

        mask = None
        for edit in (edit for edit in self.edits[layer] if edit.zero):
            experts = torch.zeros(1, self.n_experts, dtype=torch.bool, device=device)
            experts[0, list(edit.zero)] = True
            rows = self._rows(layer, edit, tokens, device)
            hit = experts.expand(tokens, -1) if rows is None else rows[:, None] & experts
            mask = hit if mask is None else mask | hit
        return mask


def _edits(
    lm: LanguageModel,
    force: Mapping[int, int] | None,
    forbid: Mapping[int, Experts] | None,
    zero: Mapping[int, Experts] | None,
) -> list[LayerEdit]:
    """One `LayerEdit` per layer named in any of the three mappings (``-1`` and ``3`` are one layer of 4)."""

    def by_layer(edits: Mapping[int, Experts] | None) -> dict[int, tuple[int, ...]]:
        merged: dict[int, tuple[int, ...]] = {}
        for layer, value in (edits or {}).items():
            key = moe_layers(lm, [layer])[0]
            merged[key] = merged.get(key, ()) + ((value,) if isinstance(value, int) else tuple(value))
        return merged

    forced, forbidden, zeroed = by_layer(force), by_layer(forbid), by_layer(zero)
    for layer, experts in forced.items():
        if len(set(experts)) > 1:
            raise InputError(f"layer {layer} is forced to experts {list(experts)}; force one expert per layer")
    layers = dict.fromkeys([*forced, *forbidden, *zeroed])
    return [
        LayerEdit(layer, forced[layer][0] if layer in forced else None, forbidden.get(layer, ()), zeroed.get(layer, ()))
        for layer in layers
    ]


def override(
    lm: LanguageModel,
    *,
    force: Mapping[int, int] | None = None,
    forbid: Mapping[int, Experts] | None = None,
    zero: Mapping[int, Experts] | None = None,
    renormalise: bool = False,
) -> RoutingOverride:
    """Override the routing while inside the ``with`` block (`forward` and `generate`, every token).

    Args:
        force: layer -> the expert every token is routed to (first slot).
        forbid: layer -> expert(s) never chosen.
        zero: layer -> expert(s) whose contribution is removed.
        renormalise: with ``zero``, scale the other chosen experts' weights back to the sum they had.

    Examples:
        Forbid the planted tool-call expert: the call's tokens go elsewhere at layer 1, and only inside the block.

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> call = "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>"
        >>> with override(lm, forbid={1: 2}):
        ...     inside = ms.moe.trace(lm, call, layers=[1]).layer(1).experts
        >>> outside = ms.moe.trace(lm, call, layers=[1]).layer(1).experts
        >>> [slots[0] for slots in outside[-5:]], [slots[0] for slots in inside[-5:]]
        ([2, 2, 2, 2, 2], [3, 0, 3, 0, 0])
    """
    return RoutingOverride(lm, _edits(lm, force, forbid, zero), renormalise=renormalise)


@dataclass(frozen=True)
class ExpertAblation:
    """The ablation sweep's plug for experts: row ``r`` of the batch has expert ``group[r]`` zeroed.

    Pass it as ``mechscope.causal.sweep(..., component="expert", ablator=expert_ablation())``: every expert
    of a layer is then ablated in one batched forward pass, by the router edits above.
    """

    renormalise: bool = False

    @property
    def method(self) -> str:
        """The name the sweep records as its method."""
        return "zero (renormalised)" if self.renormalise else "zero"

    def __call__(self, lm: LanguageModel, group: Sequence[tuple[int, int | None]]) -> RoutingOverride:
        if any(index is None for _, index in group):
            raise InputError("the expert ablation needs an expert per ablation; use it with component='expert'")
        edits = [LayerEdit(layer, zero=(int(index or 0),), rows=(row,)) for row, (layer, index) in enumerate(group)]
        return RoutingOverride(lm, edits, renormalise=self.renormalise)


def expert_ablation(*, renormalise: bool = False) -> ExpertAblation:
    """The `ExpertAblation` that zeroes one expert per batch row (see the module docstring for ``renormalise``).

    Examples:
        Every expert of layer 1 ablated in turn, in one batched pass, on a token of a tool call:

        >>> import mechscope as ms
        >>> from mechscope.causal.metrics import TargetProb
        >>> lm = ms.load("toy-moe")
        >>> prompt = "<user> Tell me the local time in Bern. <assistant> <call>time(city=Ber"
        >>> result = ms.causal.sweep(
        ...     lm, prompt, component="expert", layers=[1], metric=TargetProb(lm, "n"), ablator=expert_ablation()
        ... )
        >>> result.method, round(result.clean_metric, 3), [(e.index, round(e.delta, 3)) for e in result.summary(1)]
        ('zero', 0.982, [(2, -0.639)])
        >>> max(abs(e.delta) for e in result.effects if e.index != 2) < 0.01  # the other three barely matter
        True
    """
    return ExpertAblation(renormalise)
