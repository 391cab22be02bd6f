"""Where each site kind lives in a forward pass, and how to read or replace its value there.

A site kind is read from one module (named by the architecture map) either at its input (a pre-hook)
or at its output (a forward hook), taking one element when the module returns a tuple. Sites that share a
module and phase share one hook.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mechscope.core.sites import Site
from mechscope.errors import InterventionError, SiteError
from mechscope.models.archmap import ModelMap

Phase = Literal["in", "out"]


@dataclass(frozen=True)
class Point:
    """A module (named by `ModelMap`), the phase to hook, and the tuple element holding the value."""

    part: str
    phase: Phase
    item: int = 0


POINTS: dict[str, Point] = {
    "embed": Point("embed", "out"),
    "resid_pre": Point("layer", "in"),
    "resid_post": Point("layer", "out"),
    "attn_out": Point("attn_out", "out"),
    "mlp_out": Point("mlp_out", "out"),
    "head_out": Point("o_proj", "in"),
    "attn_pattern": Point("attn", "out", item=1),
    "router_logits": Point("router", "out", item=0),
    "expert_weight": Point("router", "out", item=1),
    "expert_index": Point("router", "out", item=2),
    "expert_out": Point("experts", "out"),
}


def module_for(site: Site, arch: ModelMap) -> nn.Module:
    """The model's own module that the hook for ``site`` is registered on."""
    part = POINTS[site.kind].part
    if part == "embed":
        return arch.embed_module()
    assert site.layer is not None
    if part == "layer":
        return arch.layer(site.layer)
    return arch.part(part, site.layer)


def _element(output: Any, item: int) -> Any:
    if isinstance(output, tuple | list):
        return output[item]
    if item != 0:
        raise SiteError(f"expected a tuple output with element {item}, got {type(output).__name__}")
    return output


def _replace_element(output: Any, item: int, value: Tensor) -> Any:
    if isinstance(output, tuple | list):
        return type(output)((*output[:item], value, *output[item + 1 :]))
    return value


def input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The hidden-state input of a hooked module, passed positionally or as ``hidden_states``."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    if not isinstance(value, Tensor):
        raise SiteError("cannot find the hidden-state input of the hooked module")
    return value


def replace_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` with the hidden-state input replaced by ``value``."""
    if args and isinstance(args[0], Tensor):
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _split_heads(flat: Tensor, arch: ModelMap) -> Tensor:
    return flat.view(*flat.shape[:-1], arch.n_heads, arch.head_dim)


def read(site: Site, arch: ModelMap, payload: Any, batch: int) -> Tensor:
    """Read ``site``'s value from a hook payload.

    The payload is the module's ``output`` for an "out" point, ``(args, kwargs)`` for an "in" point, and
    ``(args, kwargs, output, module)`` for ``expert_out``.

    ``batch`` reshapes the flattened ``[tokens, ...]`` tensors that MoE modules see.
    """
    point = POINTS[site.kind]
    if site.kind == "expert_out":
        return expert_output(site, payload, batch)
    value = input_tensor(*payload) if point.phase == "in" else _element(payload, point.item)
    if site.kind == "head_out":
        heads = _split_heads(value, arch)
        return heads if site.index is None else heads[..., site.index, :]
    if site.kind == "attn_pattern":
        if value is None:
            raise SiteError("the attention module returned no weights; load the model with attn_implementation='eager'")
        return value if site.index is None else value[:, site.index]
    if point.part == "router":
        return value.reshape(batch, -1, value.shape[-1])
    return value


Reader = Callable[[Any, int], Tensor]


def _first_output(payload: Any, batch: int) -> Tensor:
    value: Tensor = payload[0] if type(payload) is tuple else payload
    return value


def _first_input(payload: Any, batch: int) -> Tensor:
    return input_tensor(payload[0], payload[1])


def reader(site: Site, arch: ModelMap) -> Reader:
    """A function ``(payload, batch) -> value`` for ``site``: `read`, specialised once per capture plan.

    The residual-stream sites, read on every layer of every pass, get branch-free readers.
    """
    point = POINTS[site.kind]
    if point.item == 0 and site.kind in ("embed", "resid_post", "attn_out", "mlp_out"):
        return _first_output
    if site.kind == "resid_pre":
        return _first_input
    return functools.partial(read, site, arch)


def write(site: Site, arch: ModelMap, payload: Any, value: Tensor) -> Any:
    """A payload like ``payload`` with ``site``'s value replaced by ``value``."""
    point = POINTS[site.kind]
    if not site.spec.writable:
        raise InterventionError(f"{site.kind} is read-only; intervene on head_out or the residual instead")
    if site.kind == "head_out":
        flat = input_tensor(*payload)
        if site.index is None:
            new_flat = value.reshape(flat.shape)
        else:
            heads = _split_heads(flat, arch).clone()
            heads[..., site.index, :] = value
            new_flat = heads.reshape(flat.shape)
        return replace_input(payload[0], payload[1], new_flat)
    if point.phase == "in":
        return replace_input(payload[0], payload[1], value)
    return _replace_element(payload, point.item, value)


@dataclass(frozen=True)
class ExpertCall:
    """The arguments a packed-experts module was called with: flat tokens and their routing."""

    hidden: Tensor  # [tokens, d_model]
    index: Tensor  # [tokens, top_k]
    weight: Tensor  # [tokens, top_k]

    @classmethod
    def from_payload(cls, payload: Any) -> ExpertCall:
        args, kwargs = payload[0], payload[1]
        values = [*args, *kwargs.values()]
        if len(values) < 3:
            raise SiteError("the experts module was not called as experts(hidden, top_k_index, top_k_weights)")
        return cls(values[0], values[1], values[2])

    def routed(self, expert: int) -> Tensor:
        """Indices of the tokens routed to ``expert``."""
        return (self.index == expert).any(dim=-1).nonzero()[:, 0]

    def weight_of(self, expert: int) -> Tensor:
        """``[tokens]``: each token's routing weight for ``expert`` (0 where not routed)."""
        return (self.weight * (self.index == expert)).sum(dim=-1)


def run_expert(module: nn.Module, call: ExpertCall, expert: int, tokens: Tensor) -> Tensor:
    """Expert ``expert``'s own output for ``tokens``, computed by the module's own forward.

    Routing just those tokens to just that expert with weight 1 makes the packed module evaluate one
    expert exactly as it does inside the model, whatever its weight layout or kernel.
    """
    hidden = call.hidden[tokens]
    index = torch.full((hidden.shape[0], 1), expert, dtype=call.index.dtype, device=hidden.device)
    weight = torch.ones((hidden.shape[0], 1), dtype=call.weight.dtype, device=hidden.device)
    out: Tensor = module.forward(hidden, index, weight)
    return out


def expert_output(site: Site, payload: Any, batch: int) -> Tensor:
    """``[batch, pos, d_model]``: expert ``site.index``'s output, zero for tokens not routed to it."""
    assert site.index is not None
    module: nn.Module = payload[3]
    call = ExpertCall.from_payload(payload)
    out = torch.zeros_like(call.hidden)
    tokens = call.routed(site.index)
    if tokens.numel():
        out[tokens] = run_expert(module, call, site.index, tokens).to(out.dtype)
    return out.reshape(batch, -1, out.shape[-1])
