"""How a mixture-of-experts model routes: its MoE and dense layers, shared experts and router rule.

The knowledge comes from the family's row (`mechscope.models.families.RoutingSpec`, read off transformers'
own router code) and the model's config; the modules the row names are checked on the loaded model.

Examples:
    >>> import mechscope as ms
    >>> info = moe_info(ms.load("toy-moe"))
    >>> info.family, info.n_experts, info.top_k, info.moe_layers
    ('mixtral', 4, 2, [0, 1, 2, 3])
    >>> info.router_rule
    'softmax over all experts, then top-k, renormalised to sum to 1'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mechscope.errors import ArchitectureError, MoEError
from mechscope.models.families import RoutingSpec
from mechscope.moe.results import MoEInfo

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel


def require_moe(lm: LanguageModel) -> None:
    """Check that ``lm`` routes tokens to experts.

    Raises:
        MoEError: the model is dense (one line naming the model and its family).
    """
    if not lm.arch.is_moe:
        raise MoEError(
            f"{lm.source} has no experts (family {lm.arch.family} is dense); "
            "moe commands need a mixture-of-experts model"
        )


def moe_layers(lm: LanguageModel, layers: Sequence[int] | None = None) -> list[int]:
    """``layers`` (negative counting from the end) checked to be MoE layers; None means every MoE layer.

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model or has no router (the message lists the MoE layers).
    """
    require_moe(lm)
    if layers is None:
        return list(lm.arch.moe_layers)
    sites = lm.sites([f"router_logits.{layer}" for layer in layers])
    return [site.layer for site in sites if site.layer is not None]


def moe_info(lm: LanguageModel) -> MoEInfo:
    """Describe how ``lm`` routes (see `MoEInfo` for the fields).

    Examples:
        >>> import mechscope as ms
        >>> info = moe_info(ms.load("toy-moe"))  # also `mechscope.moe.info`
        >>> info.rule, info.renormalised, info.shared_experts, info.dense_layers, info.aux_loss_coef
        ('softmax_topk', True, 0, [], 0.02)

    Raises:
        MoEError: the model has no experts.
        ArchitectureError: the family row names a module the model lacks, or a config flag it does not set.
    """
    require_moe(lm)
    arch = lm.arch
    routing = arch.spec.routing
    config = arch.model.config
    renormalised = None if routing is None else _renormalises(routing, config, arch.family)
    shared, gated = _shared_expert(lm, routing)
    coef = getattr(config, "router_aux_loss_coef", None)
    return MoEInfo(
        model=lm.source,
        family=arch.family,
        n_layers=arch.n_layers,
        n_experts=arch.n_experts,
        top_k=arch.top_k,
        moe_layers=list(arch.moe_layers),
        dense_layers=[i for i in range(arch.n_layers) if i not in arch.moe_layers],
        shared_experts=shared,
        shared_expert_gated=gated,
        rule=None if routing is None else routing.rule,
        renormalised=renormalised,
        router_rule=describe_rule(routing, renormalised),
        packed_experts=None if routing is None else _packed(lm, routing),
        aux_loss_coef=None if coef is None else float(coef),
    )


def describe_rule(routing: RoutingSpec | None, renormalised: bool | None) -> str:
    """A family's router rule in words."""
    if routing is None:
        return "unknown: the family has no row in mechscope.models.families (discovered), so its rule is not known"
    if routing.rule == "topk_softmax":
        return "top-k of the logits, then softmax over the k"
    if renormalised:
        return "softmax over all experts, then top-k, renormalised to sum to 1"
    return "softmax over all experts, then top-k, not renormalised (the k weights sum to less than 1)"


def _renormalises(routing: RoutingSpec, config: Any, family: str) -> bool:
    flag = routing.renormalise
    if isinstance(flag, bool):
        return flag
    if not hasattr(config, flag):
        raise ArchitectureError(f"the {family} row reads config.{flag}, which this model's config does not set")
    return bool(getattr(config, flag))


def _shared_expert(lm: LanguageModel, routing: RoutingSpec | None) -> tuple[int, bool]:
    """``(shared experts per MoE layer, gated)``, after checking the row's modules exist."""
    from mechscope.models.archmap import get_submodule

    if routing is None or routing.shared_expert is None:
        return 0, False
    layer = lm.arch.layer(lm.arch.moe_layers[0])
    get_submodule(layer, routing.shared_expert)
    if routing.shared_expert_gate is not None:
        get_submodule(layer, routing.shared_expert_gate)
    return 1, routing.shared_expert_gate is not None


def _packed(lm: LanguageModel, routing: RoutingSpec) -> bool:
    """The row's ``packed_experts``, checked against the experts module of the first MoE layer."""
    experts = lm.arch.part("experts", lm.arch.moe_layers[0])
    found = any(param.dim() == 3 for param in experts.parameters(recurse=False))
    if found != routing.packed_experts:
        kind = "3-D expert tensors" if found else "one module per expert"
        raise ArchitectureError(
            f"the {lm.arch.family} row says packed_experts={routing.packed_experts}, but the "
            f"model keeps {kind}; fix the row in mechscope.models.families"
        )
    return found
