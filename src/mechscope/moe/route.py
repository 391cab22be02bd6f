"""One prompt run clean and with its routing overridden: a scored target or two generations, side by side.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy-moe")
    >>> result = reroute(lm, "The capital of France is", force={1: 2}, target=" Paris")
    >>> result.routed_share[1][2]
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError
from mechscope.moe.intervention_results import RouteResult
from mechscope.moe.interventions import Experts, override

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel


def reroute(
    lm: LanguageModel,
    prompt: str,
    *,
    force: Mapping[int, int] | None = None,
    forbid: Mapping[int, Experts] | None = None,
    zero: Mapping[int, Experts] | None = None,
    renormalise: bool = False,
    target: str | None = None,
    max_new_tokens: int = 20,
) -> RouteResult:
    """Run ``prompt`` clean and with the routing overridden: score ``target`` at the end, or generate.

    ``routed_share`` is measured on the prompt's forward pass under the override, from the router outputs
    the experts received (a forced expert has share 1.0, a forbidden one 0.0).

    Examples:
        Inside a tool call, the planted expert 2 of layer 1 matters and the little-used expert 0 does not:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> prompt = "<user> Tell me the local time in Bern. <assistant> <call>time(city=Ber"
        >>> for expert in (2, 0):
        ...     result = reroute(lm, prompt, zero={1: expert}, target="n")
        ...     print(expert, round(result.clean_prob, 3), round(result.prob, 3))
        2 0.982 0.343
        0 0.982 0.982
        >>> result = reroute(lm, "The capital of France is", forbid={1: [2, 3]}, max_new_tokens=2)
        >>> result.routed_share[1], result.clean_text, result.text  # top-2 of the 2 experts left: both, always
        ([1.0, 1.0, 0.0, 0.0], ' Paris.', ' Paris.')

    Raises:
        MoEError, SiteError, InputError: as `RoutingOverride`; also an empty prompt or a multi-token target.
    """
    import torch

    if not isinstance(prompt, str):
        raise InputError(f"reroute takes one prompt (a string), got {type(prompt).__name__}")
    routes = override(lm, force=force, forbid=forbid, zero=zero, renormalise=renormalise)
    token = None if target is None else lm.token_id(target)
    encoded = lm.encode(prompt)
    with torch.no_grad():
        clean = lm.forward(encoded)
        with routes, lm.capture([f"expert_index.{layer}" for layer in routes.edits]) as cache:
            changed = lm.forward(encoded)
    share = {}
    for layer in routes.edits:
        chosen = cache[f"expert_index.{layer}"][0]  # [pos, k]
        counts = torch.bincount(chosen.reshape(-1).cpu(), minlength=lm.arch.n_experts)
        share[layer] = [float(c) / chosen.shape[0] for c in counts.tolist()]
    edits = [layer_edits[0] for layer_edits in routes.edits.values()]  # override() makes one per layer
    result: dict[str, Any] = {"model": lm.source, "prompt": prompt, "renormalised": renormalise, "routed_share": share}
    result["force"] = {e.layer: e.force for e in edits if e.force is not None}
    result["forbid"] = {e.layer: list(e.forbid) for e in edits if e.forbid}
    result["zero"] = {e.layer: list(e.zero) for e in edits if e.zero}
    if token is not None:
        result.update(
            target=target,
            clean_prob=float(clean[0, -1].float().softmax(-1)[token]),
            prob=float(changed[0, -1].float().softmax(-1)[token]),
        )
    else:
        result["clean_text"] = lm.generate(prompt, max_new_tokens=max_new_tokens)
        with routes:
            result["text"] = lm.generate(prompt, max_new_tokens=max_new_tokens)
    return RouteResult(**result)
