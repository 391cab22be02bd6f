"""One MoE layer's packed expert tensors in one layout, and what its experts see on a corpus.

transformers 5 keeps a layer's experts in 3-D tensors whose layout differs by family, and each experts module
declares its own (``use_experts_implementation`` sets ``is_concatenated``, ``is_transposed``, ``has_bias``):

* Mixtral, Qwen2/3-MoE, OLMoE, Granite-MoE: ``gate_up_proj [expert, 2h, d]`` with hidden unit j's gate in row
  j and its up in row h + j (concatenated), ``down_proj [expert, d, h]``;
* GPT-OSS: ``gate_up_proj [expert, d, 2h]`` (transposed) with unit j's gate in column 2j and its up in column
  2j + 1 (interleaved), ``down_proj [expert, h, d]``, and biases (``gate_up_proj_bias [expert, 2h]`` in the
  same interleaved order, ``down_proj_bias [expert, d]``).

`read_experts` turns any of these into `ExpertWeights` (``nn.Linear`` orientation: ``gate, up [expert, h, d]``,
``down [expert, d, h]``, biases ``[expert, h]`` / ``[expert, d]``) and `write_experts` writes one back into the
module's own tensors in place; both only index and transpose, so the round trip is bit-exact. Nothing here
builds a module per expert: an edit (a merge, an overlay) rewrites the layer's own 3-D tensors and is undone
by copying the saved originals back (`applied`), so at most two copies of one layer exist at a time.

`align` matches two experts' hidden units (MC-SMoE's permutation alignment): permuting an expert's hidden
units is a symmetry of the expert (the same function), so weight similarity is only meaningful after it.

`layer_batches` streams a corpus through the model and hands over, per batch and MoE layer, what the experts
module was called with (a `LayerBatch`: its input hidden states and the routing, read by a pre-hook on the
module itself, so they are exactly what the experts computed on) for the real tokens only.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> module = lm.arch.part("experts", 0)
    >>> weights = read_experts(module)
    >>> weights.n_experts, weights.hidden, weights.d_model
    (4, 256, 128)
    >>> before = {n: p.clone() for n, p in packed_tensors(module).items()}
    >>> write_experts(module, weights)  # the round trip changes no bit
    >>> all(torch.equal(before[n], p) for n, p in packed_tensors(module).items())
    True
    >>> order = align(weights, 0, 1)
    >>> sorted(order.tolist()) == list(range(256))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mechscope.core.batching import plan_batches
from mechscope.core.bulk import token_ids
from mechscope.core.hooks import HookSet
from mechscope.core.points import ExpertCall, run_expert
from mechscope.errors import ArchitectureError, InputError, MechscopeError
from mechscope.moe.info import moe_layers
from mechscope.progress import bar

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

#: Canonical tensor name -> its hidden-unit axis in ``[expert, ...]`` (None: not per unit, the down bias).
UNIT_AXIS: dict[str, int | None] = {"gate": 1, "up": 1, "down": 2, "gate_bias": 1, "up_bias": 1, "down_bias": None}
#: The three matrices of an expert (biases are not matrices: the overlay keeps them as they are).
MATRICES = ("gate", "up", "down")


@dataclass(frozen=True)
class ExpertWeights:
    """A layer's experts in ``nn.Linear`` orientation; ``tensors`` maps a `UNIT_AXIS` name to ``[expert, ...]``."""

    tensors: dict[str, Tensor]

    @property
    def n_experts(self) -> int:
        """Experts of the layer."""
        return int(self.tensors["gate"].shape[0])

    @property
    def hidden(self) -> int:
        """Hidden units per expert (the intermediate size)."""
        return int(self.tensors["gate"].shape[1])

    @property
    def d_model(self) -> int:
        """The model width each expert reads and writes."""
        return int(self.tensors["gate"].shape[2])

    def units(self, expert: int) -> Tensor:
        """``[hidden, features]``: each hidden unit's gate row, up row, down column (and gate/up biases)."""
        parts = [self.tensors["gate"][expert], self.tensors["up"][expert], self.tensors["down"][expert].T]
        parts += [self.tensors[name][expert, :, None] for name in ("gate_bias", "up_bias") if name in self.tensors]
        return torch.cat(parts, dim=1)

    def vector(self, expert: int, order: Tensor | None = None) -> Tensor:
        """Every weight of ``expert`` as one vector, its hidden units taken in ``order`` (default: as stored)."""
        units = self.units(expert)
        parts = [(units if order is None else units[order]).reshape(-1)]
        if "down_bias" in self.tensors:
            parts.append(self.tensors["down_bias"][expert])
        return torch.cat(parts)

    def cosine(self, a: int, b: int, order: Tensor | None = None) -> float:
        """Cosine (float64) of ``vector(a)`` and ``vector(b, order)``; 0 when either expert is all zero."""
        x, y = self.vector(a).double(), self.vector(b, order).double()
        norm = float(x.norm() * y.norm())
        return float(x @ y) / norm if norm > 0 else 0.0

    def expert(self, expert: int, order: Tensor | None = None) -> dict[str, Tensor]:
        """Expert ``expert``'s tensors (no expert axis), its hidden units permuted to ``order``.

        Permuting hidden units changes the stored order, never the function: unit k of the result is unit
        ``order[k]`` of the expert, in the gate and up rows, the down column and the gate/up biases alike.
        """
        out = {}
        for name, tensor in self.tensors.items():
            value, axis = tensor[expert], UNIT_AXIS[name]
            out[name] = value if order is None or axis is None else value.index_select(axis - 1, order)
        return out

    def replaced(self, updates: Mapping[int, Mapping[str, Tensor]]) -> ExpertWeights:
        """A copy with each expert of ``updates`` given new tensors (same names and shapes, no expert axis)."""
        tensors = {name: t.clone() for name, t in self.tensors.items()}
        for expert, values in updates.items():
            for name, value in values.items():
                tensors[name][expert] = value
        return ExpertWeights(tensors)

    def with_expert(self, expert: int, values: Mapping[str, Tensor]) -> ExpertWeights:
        """A copy with expert ``expert``'s tensors replaced by ``values`` (same names, no expert axis)."""
        return self.replaced({expert: values})


def _layout(module: nn.Module) -> tuple[bool, bool, bool]:
    """``(concatenated, transposed, has_bias)`` as the experts module declares them, or a loud error."""
    flags = ("is_concatenated", "is_transposed", "has_bias", "has_gate")
    missing = [name for name in flags if not hasattr(module, name)]
    if missing:
        raise ArchitectureError(
            f"{type(module).__name__} does not declare its weight layout ({', '.join(missing)}); mechscope reads "
            "packed experts through transformers' use_experts_implementation flags"
        )
    if not module.has_gate or getattr(module, "has_post_expert_norm", False):
        raise ArchitectureError(f"{type(module).__name__}: only gate/up/down experts without a post-norm are supported")
    return bool(module.is_concatenated), bool(module.is_transposed), bool(module.has_bias)


_PACKED = ("gate_up_proj", "down_proj")
_BIASES = ("gate_up_proj_bias", "down_proj_bias")


def packed_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The experts module's own packed parameters by name (``gate_up_proj``, ``down_proj``, their biases).

    Raises:
        ArchitectureError: the module lacks one of them (experts kept one module each, or another layout).
    """
    params = dict(module.named_parameters(recurse=False))
    needed = (*_PACKED, *_BIASES) if getattr(module, "has_bias", False) else _PACKED
    missing = [name for name in needed if name not in params]
    if missing:
        raise ArchitectureError(f"{type(module).__name__} has no packed parameter {', '.join(missing)}")
    return {name: params[name] for name in needed}


def read_experts(module: nn.Module, *, copy: bool = True) -> ExpertWeights:
    """The experts module's packed tensors in the canonical layout, in the module's dtype and device.

    Args:
        copy: return copies (default). ``copy=False`` returns strided views of the module's own tensors
            (no memory at all; writing to them writes to the model), for read-only analyses.

    Raises:
        ArchitectureError: the module does not declare its layout or is not a gate/up/down experts module.
    """
    concatenated, transposed, biased = _layout(module)
    params = packed_tensors(module)

    def own(t: Tensor) -> Tensor:
        return t.clone() if copy else t

    with torch.no_grad():
        gate_up = params["gate_up_proj"].detach()
        gate_up = gate_up.transpose(1, 2) if transposed else gate_up  # -> [expert, 2h, d]
        down = params["down_proj"].detach()
        tensors = {"down": own(down.transpose(1, 2) if transposed else down)}
        pairs = [("gate", "up", gate_up)]
        if biased:
            pairs.append(("gate_bias", "up_bias", params["gate_up_proj_bias"].detach()))
            tensors["down_bias"] = own(params["down_proj_bias"].detach())
        for gate_name, up_name, both in pairs:
            half = both.shape[1] // 2
            gate, up = (both[:, :half], both[:, half:]) if concatenated else (both[:, 0::2], both[:, 1::2])
            tensors[gate_name], tensors[up_name] = own(gate), own(up)
    return ExpertWeights({name: tensors[name] for name in UNIT_AXIS if name in tensors})


def write_experts(module: nn.Module, weights: ExpertWeights) -> None:
    """Write ``weights`` into the module's own packed tensors, in place (the inverse of `read_experts`).

    Values are cast to the module's dtype by the copy.

    Raises:
        ArchitectureError: the module's layout is unknown (see `read_experts`).
        InputError: ``weights`` has other shapes than the module's experts.
    """
    concatenated, transposed, biased = _layout(module)
    params, t = packed_tensors(module), weights.tensors

    def join(gate: Tensor, up: Tensor) -> Tensor:
        # Concatenated: [gate; up] along the unit axis; interleaved: gate_0, up_0, gate_1, up_1, ...
        if concatenated:
            return torch.cat([gate, up], dim=1)
        return torch.stack([gate, up], dim=2).reshape(gate.shape[0], -1, *gate.shape[2:])

    with torch.no_grad():
        gate_up = join(t["gate"], t["up"])
        values = {
            "gate_up_proj": gate_up.transpose(1, 2) if transposed else gate_up,
            "down_proj": t["down"].transpose(1, 2) if transposed else t["down"],
        }
        if biased:
            values["gate_up_proj_bias"] = join(t["gate_bias"], t["up_bias"])
            values["down_proj_bias"] = t["down_bias"]
        wrong = [name for name, value in values.items() if value.shape != params[name].shape]
        if wrong:  # checked before any copy, so that a bad write leaves the module untouched
            raise InputError(f"expert weights do not fit {type(module).__name__}: wrong shape for {', '.join(wrong)}")
        for name, value in values.items():
            params[name].copy_(value)


@contextlib.contextmanager
def applied(module: nn.Module, weights: ExpertWeights) -> Iterator[None]:
    """Run the body with ``weights`` written into the module's tensors; the originals are copied back after.

    Only this layer's packed tensors are cloned (once); the restore copies those clones back, so the module
    is bit-identical afterwards, also when the body (or the write itself) raised. Nesting works: an inner
    ``applied`` restores what the outer one wrote.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> module = lm.arch.part("experts", 1)
        >>> weights = read_experts(module)
        >>> zeroed = weights.with_expert(2, {name: torch.zeros_like(t[2]) for name, t in weights.tensors.items()})
        >>> with applied(module, zeroed):
        ...     bool(read_experts(module).tensors["gate"][2].eq(0).all())
        True
        >>> torch.equal(read_experts(module).tensors["gate"], weights.tensors["gate"])
        True
    """
    saved = {name: p.detach().clone() for name, p in packed_tensors(module).items()}
    try:
        write_experts(module, weights)
        yield
    finally:
        with torch.no_grad():
            for name, p in packed_tensors(module).items():
                p.copy_(saved[name])


def match_units(reference: Tensor, units: Tensor) -> Tensor:
    """``order``: the permutation of the rows of ``units`` that best matches the rows of ``reference``.

    Both are ``[hidden, features]``; the order maximises ``sum_k <reference_k, units_order[k]>`` (a linear
    assignment, solved exactly by ``scipy.optimize.linear_sum_assignment``, in float64), which minimises
    ``||reference - units[order]||_F`` since a permutation does not change the norm. Cost ``O(hidden^3)``.

    Raises:
        MechscopeError: scipy is missing.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # scipy is a dependency; a broken install gets a one-line message, not a traceback
        raise MechscopeError("aligning expert neurons needs scipy; install it with `pip install scipy`") from None
    score = (reference.double() @ units.double().T).cpu().numpy()
    _, columns = linear_sum_assignment(score, maximize=True)
    return torch.as_tensor(columns, dtype=torch.long, device=units.device)


def align(weights: ExpertWeights, a: int, b: int) -> Tensor:
    """``order``: the permutation of ``b``'s hidden units that best matches ``a``'s (as MC-SMoE aligns).

    Hidden unit k of an expert is the vector ``w_k = (gate_k, up_k, down[:, k], gate/up biases_k)``;
    permuting units leaves the expert's function unchanged, so ``weights.expert(b, order)`` is expert b,
    its units in the order that makes it closest to expert a (see `match_units`).
    """
    return match_units(weights.units(a), weights.units(b))


def merged(weights: ExpertWeights, a: int, b: int) -> ExpertWeights:
    """A copy of the layer where experts ``a`` and ``b`` are both ``(W_a + P W_b) / 2``, ``P = align(a, b)``.

    Biases are averaged the same way (gate/up biases follow their units); see
    `mechscope.moe.compression_results.Merge` for what this does to the model.
    """
    wa, wb = weights.expert(a), weights.expert(b, align(weights, a, b))
    mean = {name: ((wa[name].double() + wb[name].double()) / 2).to(wa[name].dtype) for name in wa}
    return weights.replaced({a: mean, b: mean})


def truncated(matrix: Tensor, rank: int) -> Tensor:
    """The best rank-``rank`` approximation of ``matrix`` (Eckart-Young: its truncated SVD ``U_r S_r V_r^T``).

    Computed as the projection onto the top-``rank`` singular vectors of the smaller side, read from the
    eigenvectors of the Gram matrix (``torch.linalg.eigh``): ``U_r S_r V_r^T = M V_r V_r^T``. At full rank
    the projection is the identity up to rounding, with no division by small singular values; and eigh stays
    fast where a full ``torch.linalg.svd`` in float64 can be 100 times slower (MKL with busy cores).
    """
    tall = matrix.shape[0] >= matrix.shape[1]
    gram = matrix.T @ matrix if tall else matrix @ matrix.T
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues: the top ones are the last columns
    top = vectors[:, vectors.shape[1] - rank :]
    result: Tensor = (matrix @ top) @ top.T if tall else top @ (top.T @ matrix)
    return result


def null_aligned_cosine(weights: ExpertWeights, seed: int = 0) -> float:
    """The aligned cosine of expert 0 and expert 1 after a random permutation of expert 1's model dimension.

    Alignment picks the best of ``hidden!`` orders, so even unrelated experts get a positive aligned cosine.
    Shuffling the model dimension (gate/up columns, down rows and bias) keeps expert 1's weight statistics and
    removes any function it shares with expert 0: what is left is what alignment alone gives (NaN with
    fewer than two experts).
    """
    if weights.n_experts < 2:
        return float("nan")
    shuffle = torch.randperm(weights.d_model, generator=torch.Generator().manual_seed(seed))
    shuffle = shuffle.to(weights.tensors["gate"].device)
    other = weights.expert(1)
    for name in ("gate", "up"):
        other[name] = other[name][:, shuffle]
    other["down"] = other["down"][shuffle]
    if "down_bias" in other:
        other["down_bias"] = other["down_bias"][shuffle]
    pair = ExpertWeights({name: torch.stack([weights.tensors[name][0], value]) for name, value in other.items()})
    return pair.cosine(0, 1, align(pair, 0, 1))


@dataclass(frozen=True)
class LayerBatch:
    """One batch's real tokens at one MoE layer, as the experts module received them.

    Attributes:
        hidden: ``[tokens, d_model]`` the experts module's input (padding tokens left out).
        index, weight: ``[tokens, top_k]`` the router's choices and weights, as passed to the experts.
        module: the layer's experts module (not copied).
    """

    hidden: Tensor
    index: Tensor
    weight: Tensor
    module: nn.Module = field(repr=False, compare=False)

    @property
    def call(self) -> ExpertCall:
        """The arguments, as `mechscope.core.points.ExpertCall`."""
        return ExpertCall(self.hidden, self.index, self.weight)

    @property
    def n_experts(self) -> int:
        """Experts of the layer."""
        return int(packed_tensors(self.module)["down_proj"].shape[0])

    def routed(self) -> Tensor:
        """``[tokens, expert]`` bool: the token was routed to the expert."""
        mask = torch.zeros(self.index.shape[0], self.n_experts, dtype=torch.bool, device=self.index.device)
        return mask.scatter_(1, self.index, True)

    @cached_property
    def expert_out(self) -> Tensor:
        """``[expert, tokens, d_model]`` each expert's own (unweighted) output, zero where not routed.

        The values of the ``expert_out.{layer}.{expert}`` sites (up to float rounding: the sites run the
        padded batch, this only its real tokens), computed on first read with the module's weights then.
        """
        out = torch.zeros(self.n_experts, *self.hidden.shape, dtype=self.hidden.dtype, device=self.hidden.device)
        call = self.call
        with torch.no_grad():
            for e in range(self.n_experts):
                tokens = call.routed(e)
                if tokens.numel():
                    out[e, tokens] = run_expert(self.module, call, e, tokens).to(out.dtype)
        return out

    def outputs(self, tokens: Tensor | None = None) -> Tensor:
        """``[expert, tokens, d_model]``: every expert's own output on ``tokens`` (default all), routed or not.

        Each expert is run through the module's own forward (`mechscope.core.points.run_expert`), so the
        values are what the expert would give inside the model, whatever the layout or kernel.
        """
        call = self.call
        chosen = torch.arange(self.hidden.shape[0], device=self.hidden.device) if tokens is None else tokens
        with torch.no_grad():
            return torch.stack([run_expert(self.module, call, e, chosen) for e in range(self.n_experts)])


def _plan(
    lm: LanguageModel, prompts: Sequence[str], batch_size: int, max_tokens: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """``(ids, batches)``: the checked token ids and the planned batches (rows of ``ids``)."""
    if isinstance(prompts, str):
        raise InputError("a corpus is a list of prompts, not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    if batch_size < 1:
        raise InputError(f"the batch size must be at least 1, got {batch_size}")
    ids = token_ids(lm, prompts)
    plan = plan_batches([len(r) for r in ids], batch_size, max_tokens=max_tokens)
    return ids, [batch for window in plan for batch in window]


def corpus_batches(
    lm: LanguageModel, prompts: Sequence[str], batch_size: int, max_tokens: int | None
) -> Iterator[dict[str, Tensor]]:
    """The encoded batches of ``prompts``, bucketed by length like the bulk path.

    The corpus is checked and planned when this is called (a bad prompt fails here, not at the first
    ``next``); each batch is padded and encoded only when it is reached.

    Raises:
        InputError: no prompts, an empty or too long prompt, or a batch size below 1.
    """
    ids, plan = _plan(lm, prompts, batch_size, max_tokens)
    return _encode(lm, ids, plan)


def _encode(lm: LanguageModel, ids: list[list[int]], plan: list[list[int]]) -> Iterator[dict[str, Tensor]]:
    for batch in plan:
        padded = lm.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt")
        yield lm.encode({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})


def layer_batches(
    lm: LanguageModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_tokens: int | None = 2048,
    progress: bool = False,
) -> Iterator[dict[int, LayerBatch]]:
    """Stream the corpus: per batch, layer -> `LayerBatch` (memory: one batch's inputs per layer).

    One forward pass per batch, with a pre-hook on each chosen layer's experts module that keeps its
    arguments; the hooks are removed before the batch is handed over.

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is not an MoE layer.
        InputError: see `corpus_batches`.
    """
    chosen = moe_layers(lm, layers)
    ids, plan = _plan(lm, prompts, batch_size, max_tokens)
    batches = _encode(lm, ids, plan)
    modules = {layer: lm.arch.part("experts", layer) for layer in chosen}

    def stream() -> Iterator[dict[int, LayerBatch]]:
        with bar("experts", len(ids), enabled=progress) as shown:
            for rows, encoded in zip(plan, batches, strict=True):
                calls: dict[int, ExpertCall] = {}
                hooks = HookSet()
                try:
                    for layer, module in modules.items():

                        def keep(_: nn.Module, args: Any, kwargs: Any, layer: int = layer, calls: Any = calls) -> None:
                            calls[layer] = ExpertCall.from_payload((args, kwargs))

                        hooks.pre(module, keep, with_kwargs=True)
                    with torch.no_grad():
                        lm.model(**encoded, use_cache=False)
                finally:
                    hooks.close()
                mask = encoded["attention_mask"].bool().reshape(-1)
                yield {layer: _real(calls, mask, layer, module, lm.arch.family) for layer, module in modules.items()}
                if shown is not None:
                    shown.advance(len(rows))

    return stream()


def _real(calls: dict[int, ExpertCall], mask: Tensor, layer: int, module: nn.Module, family: str) -> LayerBatch:
    """The call at ``layer`` restricted to the real tokens (the module sees ``[batch * pos, d_model]``)."""
    call = calls.get(layer)
    if call is None or call.hidden.dim() != 2 or call.hidden.shape[0] != mask.numel():
        raise ArchitectureError(
            f"{family} layer {layer}: the experts module was not called once with the batch's tokens flattened "
            "to [batch * pos, d_model]; mechscope cannot read its input"
        )
    keep = mask.to(call.hidden.device)
    return LayerBatch(call.hidden[keep], call.index[keep], call.weight[keep], module)
