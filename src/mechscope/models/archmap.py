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
from mechscope.models.discovery import (
    DIM_ATTRS,
    discover_spec,
    first_attr,
    has_submodule,
    path_of,
    unknown_output_attrs,
)
from mechscope.models.families import FAMILIES, OUTPUT_TRANSFORMS, FamilySpec, Kind

# FAMILIES is re-exported as the very dict `build_map` looks rows up in (tests patch it here).
__all__ = [
    "FAMILIES",
    "FamilySpec",
    "ModelMap",
    "build_map",
    "discover_spec",
    "gap",
    "get_submodule",
    "tolerance",
]

logger = logging.getLogger(__name__)

# MoE config attribute names, tried in order (the dense dimensions use `discovery.DIM_ATTRS`).
_EXPERT_ATTRS = ("num_local_experts", "num_experts", "n_routed_experts")
_TOPK_ATTRS = ("num_experts_per_tok", "moe_top_k", "top_k")


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for two computations of one value in ``dtype`` that may round differently."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def gap(value: Tensor, reference: Tensor) -> tuple[float, float]:
    """``(max |value - reference|, max(1, max |reference|))``: equal within ``tol`` when the first is
    at most ``tol`` times the second."""
    if not reference.numel():
        return 0.0, 1.0
    worst = float((value.float() - reference.float().to(value.device)).abs().max())
    return worst, max(1.0, float(reference.float().abs().max()))


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
        readout_error: why `logits` refuses (a discovered family whose read-out is not the model's), or None.
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
    readout_error: str | None = None
    _modules: dict[tuple[str, int | None], nn.Module] = field(default_factory=dict, compare=False, repr=False)

    def __repr__(self) -> str:
        # The generated repr would print the whole model (it is a field); a map is its dimensions.
        moe = (
            f", experts={self.n_experts}, top_k={self.top_k}, moe_layers={len(self.moe_layers)}" if self.is_moe else ""
        )
        return (
            f"ModelMap(family={self.family!r}, kind={self.kind!r}, layers={self.n_layers}, heads={self.n_heads}, "
            f"kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, d_model={self.d_model}, vocab={self.vocab}{moe})"
        )

    @property
    def residual_scale(self) -> float:
        """What ``attn_out`` / ``mlp_out`` are multiplied by when added to the residual (1 for most families)."""
        name = self.spec.residual_scale
        value = getattr(self.model.config, name, None) if name is not None else None
        return 1.0 if value is None else float(value)

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

        Applies the final norm, the unembedding, and the family's output transform (``spec.output_transform``:
        Gemma-2/3 soft-capping, Granite's ``logits_scaling``, Cohere's ``logit_scale`` ...). On the last
        layer's output this equals the model's own logits (`mechscope doctor` checks it).

        Raises:
            ArchitectureError: the model has no unembedding (e.g. a bare encoder), or it is a discovered
                family whose read-out does not reproduce the model's logits (``readout_error``).
        """
        if self.readout_error is not None:
            raise ArchitectureError(self.readout_error)
        head = self.unembed()
        if head is None:
            raise ArchitectureError(f"{self.family} was loaded without an unembedding; the lens needs one")
        norm = self.final_norm()
        logits: Tensor = head(norm(resid) if norm is not None else resid)
        config = self.model.config
        for name in self.spec.output_transform:
            value = getattr(config, name, None)
            if value is None:
                continue
            op = OUTPUT_TRANSFORMS[name]
            if op == "multiply":
                logits = logits * value
            elif op == "divide":
                logits = logits / value
            else:
                logits = torch.tanh(logits / value) * value
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
    arch = ModelMap(
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
    if family != model_type and spec.unembed is not None:
        problem = _readout_problem(arch, model_type)
        if problem is not None:
            logger.warning("%s", problem)
            arch = replace(arch, readout_error=problem)
    return arch


def _readout_problem(arch: ModelMap, model_type: str) -> str | None:
    """Why a discovered family's read-out cannot be trusted, or None when it reproduces the model's logits.

    Config attributes that look like an output transform discovery does not know are refused outright;
    otherwise one forward pass of a few tokens compares `ModelMap.logits` of the last layer's output with the
    model's own logits. Models on the meta device are not checked (they cannot run a lens anyway).
    """
    fix = f"add a row for model_type '{model_type}' to mechscope.models.families.FAMILIES"
    unknown = unknown_output_attrs(arch.model.config)
    if unknown:
        names = ", ".join(f"{name}={value}" for name, value in unknown.items())
        return (
            f"{arch.family}: the config sets {names}, which looks like an output transform that discovery "
            f"cannot apply, so the lens would be wrong; {fix}"
        )
    weight = next(iter(arch.embed_module().parameters()), None)
    if weight is None or weight.is_meta:
        return None
    caught: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        caught.append(output[0] if isinstance(output, tuple | list) else output)

    ids = torch.arange(min(arch.vocab, 8), device=weight.device).unsqueeze(0)
    handle = arch.layer(arch.n_layers - 1).register_forward_hook(keep)
    try:
        with torch.no_grad():
            logits = getattr(arch.model(input_ids=ids), "logits", None)
            read = arch.logits(caught[-1]) if logits is not None and caught else None
    except Exception as error:  # a probe that cannot run must not stop the load; it only refuses the lens
        first = (str(error).splitlines() or [type(error).__name__])[0]
        return f"{arch.family}: could not check the lens read-out ({type(error).__name__}: {first}); {fix}"
    finally:
        handle.remove()
    if logits is None or read is None:
        return None
    worst, scale = gap(read[:, -logits.shape[1] :], logits)
    if worst <= max(tolerance(read.dtype), tolerance(logits.dtype)) * scale:
        return None
    applied = ", ".join(arch.spec.output_transform) or "no output transform"
    return (
        f"{arch.family}: the lens read-out (final norm, unembedding, {applied}) does not reproduce the model's "
        f"own logits (max |diff| {worst:.3g} at scale {scale:.3g}): the model transforms its logits in a way "
        f"discovery does not know; {fix}"
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
