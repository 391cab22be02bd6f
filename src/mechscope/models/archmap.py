"""The architecture map: a family's row bound to a loaded model.

`ModelMap` binds a `FamilySpec` (the declarative rows live in `mechscope.models.families`; families with
no row are guessed by `mechscope.models.discovery`) to a loaded model, checks that every named module
exists, and answers questions such as "which module's output is layer 3's MLP contribution to the
residual stream?". With `families`, `discovery`, `block_weights` and `param_names` this is the only part
of mechscope that knows model families.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.errors import ArchitectureError
from mechscope.models.discovery import DIM_ATTRS, discover_spec, first_attr, has_submodule, path_of
from mechscope.models.families import FAMILIES, FamilySpec, Kind

# FAMILIES is re-exported as the very dict `build_map` looks rows up in (tests patch it here).
__all__ = ["FAMILIES", "FamilySpec", "ModelMap", "build_map", "discover_spec", "get_submodule"]

logger = logging.getLogger(__name__)

# MoE config attribute names, tried in order (the dense dimensions use `discovery.DIM_ATTRS`).
_EXPERT_ATTRS = ("num_local_experts", "num_experts", "n_routed_experts")
_TOPK_ATTRS = ("num_experts_per_tok", "moe_top_k", "top_k")


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """Return ``root``'s submodule at a dotted ``path``, or raise naming the missing part."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ArchitectureError(
            f"{type(root).__name__} has no submodule '{path}'; the architecture map entry is wrong for this model"
        ) from None


@dataclass(frozen=True)
class ModelMap:
    """A family spec bound to a model: dimensions plus the modules each site hooks.

    Attributes:
        family: the transformers ``model_type`` (or ``"generic:<type>"`` when discovered).
        kind: ``"decoder"`` or ``"encoder"``.
        n_layers, n_heads, n_kv_heads, head_dim, d_model, vocab: model dimensions.
        n_experts, top_k: MoE dimensions (0 for dense models).
        moe_layers: indices of the layers that have a router.
        spec: the module paths.
    """

    family: str
    kind: Kind
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab: int
    n_experts: int
    top_k: int
    moe_layers: tuple[int, ...]
    spec: FamilySpec
    model: nn.Module
    _modules: dict[tuple[str, int | None], nn.Module] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        """Whether any layer routes tokens to experts."""
        return bool(self.moe_layers)

    def layer(self, index: int) -> nn.Module:
        """The decoder (or encoder) layer module at ``index``."""
        return self._resolve(("layer", index))

    def part(self, name: str, layer: int) -> nn.Module:
        """The module named by spec field ``name`` (e.g. ``"o_proj"``) inside layer ``layer``."""
        return self._resolve((name, layer))

    def embed_module(self) -> nn.Module:
        """The token embedding module."""
        return self._resolve(("embed", None))

    def final_norm(self) -> nn.Module | None:
        """The norm applied after the last layer, or None for families without one."""
        return None if self.spec.final_norm is None else self._resolve(("final_norm", None))

    def unembed(self) -> nn.Module | None:
        """The unembedding (LM head), or None for encoders loaded without one."""
        return None if self.spec.unembed is None else self._resolve(("unembed", None))

    def _resolve(self, key: tuple[str, int | None]) -> nn.Module:
        """Look a part up once; later calls are a dict hit (hooks are set up on every capture)."""
        module = self._modules.get(key)
        if module is None:
            name, layer = key
            if layer is None:
                module = get_submodule(self.model, getattr(self.spec, name))
            else:
                layers = get_submodule(self.model, self.spec.layers)
                assert isinstance(layers, nn.ModuleList)
                if name == "layer":
                    module = layers[layer]
                else:
                    path = getattr(self.spec, name)
                    if path is None:
                        raise ArchitectureError(f"{self.family} has no '{name}' part")
                    module = get_submodule(layers[layer], path)
            self._modules[key] = module
        return module

    def logits(self, resid: Tensor) -> Tensor:
        """Read a residual out as logits the way the model reads its last one (the logit lens).

        Applies the final norm, the unembedding, and the family's output transform: Gemma-2/3 soft-capping
        (``final_logit_softcapping``) and Granite's ``logits_scaling``. On the last layer's output this equals
        the model's own logits.

        Raises:
            ArchitectureError: the model has no unembedding (e.g. a bare encoder).
        """
        head = self.unembed()
        if head is None:
            raise ArchitectureError(f"{self.family} was loaded without an unembedding; the lens needs one")
        norm = self.final_norm()
        logits: Tensor = head(norm(resid) if norm is not None else resid)
        config = self.model.config
        scaling = getattr(config, "logits_scaling", None)
        if scaling is not None and self.family == "granitemoe":
            logits = logits / scaling
        cap = getattr(config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def summary(self) -> dict[str, Any]:
        """The dimensions as a plain dict (for tables and JSON)."""
        return {
            "family": self.family,
            "kind": self.kind,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "d_model": self.d_model,
            "vocab": self.vocab,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "moe_layers": list(self.moe_layers),
        }


def build_map(model: nn.Module) -> ModelMap:
    """Bind the row for ``model.config.model_type`` to ``model`` (or discover one) and check it.

    Raises:
        ArchitectureError: a named module is missing, or discovery failed; the message names the part.
    """
    config = model.config
    model_type = str(getattr(config, "model_type", ""))
    spec = FAMILIES.get(model_type)
    family = model_type
    if spec is None:
        spec = discover_spec(model)
        family = f"generic:{model_type}"
        logger.warning(
            "mechscope has no architecture row for model_type '%s'; discovered %s. "
            "Run `mechscope doctor` before trusting results.",
            model_type,
            spec,
        )
    spec = _adapt_to_head(model, spec)
    dims = _dimensions(config, model_type)
    layers = get_submodule(model, spec.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) != dims["n_layers"]:
        raise ArchitectureError(f"'{spec.layers}' of {type(model).__name__} is not a list of {dims['n_layers']} layers")
    for part in ("attn", "o_proj", "attn_out", "mlp_out"):
        get_submodule(layers[0], getattr(spec, part))
    get_submodule(model, spec.embed)
    moe_layers: tuple[int, ...] = ()
    if spec.router is not None:
        moe_layers = tuple(i for i, layer in enumerate(layers) if has_submodule(layer, spec.router))
    return ModelMap(
        family=family,
        kind=spec.kind,
        moe_layers=moe_layers,
        spec=spec,
        model=model,
        n_layers=dims["n_layers"],
        n_heads=dims["n_heads"],
        n_kv_heads=dims["n_kv_heads"],
        head_dim=dims["head_dim"],
        d_model=dims["d_model"],
        vocab=dims["vocab"],
        n_experts=dims["n_experts"],
        top_k=dims["top_k"],
    )


def _adapt_to_head(model: nn.Module, spec: FamilySpec) -> FamilySpec:
    """Drop parts a given head class lacks (e.g. ``lm_head`` on a bare ``BertModel``) and fix prefixes.

    A family's row is written for its ``*ForCausalLM`` class; the bare base model (``LlamaModel``) has the
    same modules one level up, so a missing first path component is stripped when that resolves.
    """
    prefix = spec.layers.split(".")[0]
    if not has_submodule(model, spec.layers) and has_submodule(model, spec.layers.split(".", 1)[-1]):

        def strip(path: str | None) -> str | None:
            if path is not None and path.startswith(prefix + "."):
                return path[len(prefix) + 1 :]
            return path

        spec = replace(
            spec,
            layers=strip(spec.layers) or spec.layers,
            embed=strip(spec.embed) or spec.embed,
            final_norm=strip(spec.final_norm),
        )
    if spec.unembed is not None and not has_submodule(model, spec.unembed):
        getter: Any = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        path = path_of(model, head) if isinstance(head, nn.Module) else None
        spec = replace(spec, unembed=path)
    return spec


def _dimensions(config: Any, model_type: str) -> dict[str, int]:
    dims: dict[str, int] = {}
    for name, attrs in DIM_ATTRS.items():
        value = first_attr(config, attrs)
        if value is None:
            raise ArchitectureError(
                f"config of model_type '{model_type}' has none of {', '.join(attrs)} (needed for {name})"
            )
        dims[name] = int(value)
    dims["n_kv_heads"] = int(getattr(config, "num_key_value_heads", None) or dims["n_heads"])
    dims["head_dim"] = int(getattr(config, "head_dim", None) or dims["d_model"] // dims["n_heads"])
    dims["n_experts"] = int(first_attr(config, _EXPERT_ATTRS) or 0)
    dims["top_k"] = int(first_attr(config, _TOPK_ATTRS) or 0) if dims["n_experts"] else 0
    return dims
