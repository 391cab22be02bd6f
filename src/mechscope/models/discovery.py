"""Generic discovery: guess a `FamilySpec` for a family with no row, from common module names.

Also home to the small module-tree and config helpers that discovery shares with
`mechscope.models.archmap` (which imports this module, never the other way round).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from mechscope.errors import ArchitectureError
from mechscope.models.families import OUTPUT_TRANSFORMS, FamilySpec

# Config attribute names to try, in order, for each dimension. transformers' attribute_map already
# translates most legacy names (GPT-2's n_embd ...), the fallbacks cover the rest.
DIM_ATTRS: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "n_heads": ("num_attention_heads", "n_head"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "vocab": ("vocab_size",),
}

# Names generic discovery tries for families with no row, most common first.
_ATTN_NAMES = ("self_attn", "attention", "attn", "self_attention")
_O_PROJ_NAMES = ("o_proj", "dense", "c_proj", "out_proj", "wo")
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
_ROUTER_NAMES = ("gate", "router")
_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "final_norm")
_RESIDUAL_SCALES = ("residual_multiplier",)

# Config attribute names that look like a transform of the logits (or of what the unembedding reads) ...
_OUTPUT_LIKE = re.compile(r"logit|lm_head|unembed|output_mult|output_scal|readout|mup|width_mult")
# ... unless they are about something else (attention scores, routers, how many logits to return).
_NOT_OUTPUT = re.compile(r"attn|attention|router|num_|keep|init|bias|chunk|temperature|loss|aux")


def first_attr(config: Any, names: tuple[str, ...]) -> Any:
    """The first of ``config``'s attributes ``names`` that is set (not None), or None."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def has_submodule(root: nn.Module, path: str) -> bool:
    """Whether ``root`` has a submodule at the dotted ``path``."""
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def path_of(root: nn.Module, target: nn.Module) -> str | None:
    """The dotted path of ``target`` inside ``root``, or None when it is not a submodule."""
    for name, module in root.named_modules():
        if module is target:
            return str(name)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def discover_output_transform(config: Any) -> tuple[str, ...]:
    """The known output-transform attributes (`families.OUTPUT_TRANSFORMS`) that ``config`` sets.

    Scales come before soft-caps, the order every family applies them in.
    """
    found = [name for name in OUTPUT_TRANSFORMS if _number(getattr(config, name, None))]
    return tuple(sorted(found, key=lambda name: OUTPUT_TRANSFORMS[name] == "softcap"))


def unknown_output_attrs(config: Any) -> dict[str, Any]:
    """``config``'s numeric attributes that look like an output transform discovery does not know.

    A discovered family with any of them gets no lens: its read-out could not be trusted.
    """
    to_dict: Any = getattr(config, "to_dict", None)
    items = to_dict().items() if callable(to_dict) else vars(config).items()
    return {
        name: value
        for name, value in items
        if _number(value)
        and name not in OUTPUT_TRANSFORMS
        and _OUTPUT_LIKE.search(name)
        and not _NOT_OUTPUT.search(name)
    }


def _child_named(module: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(module.named_children())
    return next((name for name in names if name in children), None)


def discover_spec(model: nn.Module) -> FamilySpec:
    """Guess a `FamilySpec` for a family with no row, from common module names.

    The guess is explicit: every part it cannot find raises `ArchitectureError` naming that part, and
    `mechscope doctor` checks the result against ``output_hidden_states`` and the model's own logits. The
    output transform and the residual multiplier are read off the config attributes it knows
    (`families.OUTPUT_TRANSFORMS`, ``residual_multiplier``).
    """
    n_layers = first_attr(model.config, DIM_ATTRS["n_layers"])
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if not candidates:
        raise ArchitectureError(
            f"cannot find the list of {n_layers} layers in {type(model).__name__}; "
            "add a row for this model_type to mechscope.models.families.FAMILIES"
        )
    layers_path, layers = candidates[0]
    layer = layers[0]
    attn = _child_named(layer, _ATTN_NAMES)
    mlp = _child_named(layer, _MLP_NAMES)
    if attn is None or mlp is None:
        missing = "attention" if attn is None else "MLP"
        raise ArchitectureError(
            f"cannot find the {missing} module in {type(layer).__name__} (children: "
            f"{', '.join(n for n, _ in layer.named_children())}); add a row to families.FAMILIES"
        )
    o_proj = _child_named(layer.get_submodule(attn), _O_PROJ_NAMES)
    if o_proj is None:
        raise ArchitectureError(f"cannot find the attention output projection in '{attn}'")
    getter: Any = getattr(model, "get_input_embeddings", None)
    embed = getter() if callable(getter) else None
    embed_path = path_of(model, embed) if isinstance(embed, nn.Module) else None
    if embed_path is None:
        raise ArchitectureError("cannot find the input embedding module")
    parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    norm = _child_named(parent, _NORM_NAMES)
    router = _child_named(layer.get_submodule(mlp), _ROUTER_NAMES)
    experts = "experts" if has_submodule(layer.get_submodule(mlp), "experts") else None
    join = (parent_path + ".") if parent_path else ""
    residual_scale = next((name for name in _RESIDUAL_SCALES if _number(getattr(model.config, name, None))), None)
    return FamilySpec(
        layers=layers_path,
        embed=embed_path,
        attn=attn,
        o_proj=f"{attn}.{o_proj}",
        attn_out=attn,
        mlp_out=mlp,
        final_norm=f"{join}{norm}" if norm else None,
        unembed="lm_head" if has_submodule(model, "lm_head") else None,
        router=f"{mlp}.{router}" if router and experts else None,
        experts=f"{mlp}.experts" if router and experts else None,
        output_transform=discover_output_transform(model.config),
        residual_scale=residual_scale,
        note="discovered",
    )
