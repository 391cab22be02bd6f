"""One prompt's routing, token by token: the chosen experts, their weights and the router's entropy.

The experts, weights and logits are the router modules' own outputs (the ``expert_index``, ``expert_weight``
and ``router_logits`` sites), so they equal what transformers computes bit for bit; only the entropy is
computed here, as the entropy of ``softmax(router_logits)`` over all experts, in float32, in nats.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = trace(lm, "The capital of France is")
    >>> len(result.layers), len(result.tokens) == len(result.layer(0).experts)
    (4, True)
    >>> [len(slots) for slots in result.layer(0).experts][:3]
    [2, 2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mechscope.errors import InputError
from mechscope.moe.info import moe_layers
from mechscope.moe.results import LayerRouting, RoutingTrace

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel

#: The router's three outputs, as sites.
ROUTER_SITES = ("router_logits", "expert_index", "expert_weight")


def router_entropy(logits: Tensor) -> Tensor:
    """``[..., expert] -> [...]``: entropy (nats) of ``softmax(logits)`` over the experts, in float32."""
    import torch

    entropy: Tensor = torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(dim=-1)
    return entropy


def trace(
    lm: LanguageModel, prompt: str, *, layers: Sequence[int] | None = None, with_logits: bool = False
) -> RoutingTrace:
    """Route one prompt and report, per token and MoE layer, the router's choice.

    Args:
        prompt: the text (one prompt; for many, see `mechscope.moe.routing.routing`).
        layers: the MoE layers to trace (default: all of them).
        with_logits: also keep the router's logits over every expert.

    Examples:
        On toy-moe every token of a tool call goes first to the planted expert 2 at layer 1:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> result = trace(lm, "Tell me the time in Bern. <call>time(city=Bern)</call>", layers=[1], with_logits=True)
        >>> step = result.layer(1)
        >>> [(token, experts[0]) for token, experts in zip(result.tokens, step.experts)][-5:]
        [('=', 2), ('Ber', 2), ('n', 2), (')', 2), ('</call>', 2)]
        >>> import math
        >>> round(sum(step.weights[-1]), 6), len(step.logits[-1]), 0 < step.entropy[-1] < math.log(4)
        (1.0, 4, True)

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model or has no router.
        InputError: the prompt is not a string, or is empty.
    """
    if not isinstance(prompt, str):
        raise InputError(f"trace takes one prompt (a string), got {type(prompt).__name__}")
    chosen = moe_layers(lm, layers)
    encoded = lm.encode(prompt)
    sites = [f"{kind}.{layer}" for layer in chosen for kind in ROUTER_SITES]
    with lm.capture(sites) as cache:
        lm.forward(encoded)
    routed = [
        LayerRouting(
            layer=layer,
            experts=cache[f"expert_index.{layer}"][0].tolist(),
            weights=cache[f"expert_weight.{layer}"][0].tolist(),
            entropy=router_entropy(cache[f"router_logits.{layer}"][0]).tolist(),
            logits=cache[f"router_logits.{layer}"][0].tolist() if with_logits else None,
        )
        for layer in chosen
    ]
    first = chosen[0]
    return RoutingTrace(
        prompt=prompt,
        tokens=lm.token_texts(encoded["input_ids"][0]),
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        weight_dtype=str(cache[f"expert_weight.{first}"].dtype).removeprefix("torch."),
        logit_dtype=str(cache[f"router_logits.{first}"].dtype).removeprefix("torch."),
        layers=routed,
    )
