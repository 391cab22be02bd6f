"""One layer's attention and MLP weights, read from a checkpoint with the architecture built on ``meta``.

The architecture comes from the checkpoint's ``config.json``: transformers builds the model on the meta
device (no weights are allocated), `mechscope.models.archmap.build_map` names its layers, attention and
output projection, and the `BlockWeights` row of the family names the norms, query/key/value projections
(separate or fused) and the MLP inside a layer. Only the tensors of those parts are then read from the
checkpoint, one layer at a time, in float32 on the CPU.

Norms and MLPs are the family's own modules: a copy of the meta module with the checkpoint's tensors
assigned to it, so every quirk (Gemma's ``1 + w`` RMSNorm, the activation, fused ``gate_up_proj``, GPT-2's
``Conv1D``) is the model's own code. The attention projections are returned as per-head tensors for
batched ``einsum`` arithmetic.

Axis names: ``head`` (query heads), ``kv_head``, ``head_dim``, ``d_model``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechscope.errors import ArchitectureError, ModelLoadError, WeightFileError
from mechscope.models.archmap import ModelMap, build_map
from mechscope.models.block_weights import BlockWeights, block_weights
from mechscope.weights.reader import Checkpoint

VectorFn = Callable[[Tensor], Tensor]
"""A function of ``[n, width]`` vectors returning ``[n, width']`` vectors (a norm, an MLP)."""


@dataclass(frozen=True)
class Skeleton:
    """A model built on the meta device from ``config.json``, with its map and block-weights row.

    Attributes:
        arch: the `ModelMap` of the meta model (dimensions and module paths).
        blocks: the family's `BlockWeights` row.
        prefix: what checkpoint tensor names put in front of the map's module paths (e.g. ``"bert."``).
    """

    arch: ModelMap
    blocks: BlockWeights
    prefix: str

    def layer_path(self, layer: int, part: str) -> str:
        """The checkpoint name prefix of module ``part`` (relative to a layer) of layer ``layer``."""
        return f"{self.prefix}{self.arch.spec.layers}.{layer}.{part}"


def build_skeleton(ckpt: Checkpoint) -> Skeleton:
    """Build the architecture of ``ckpt`` on ``meta`` from the ``config.json`` next to its weights.

    Checkpoint tensor names are the module paths plus ``.weight`` / ``.bias``, possibly behind a prefix (a
    ``BertForMaskedLM`` checkpoint says ``bert.encoder...``); the prefix is found from the names.

    Raises:
        ModelLoadError: no readable ``config.json``.
        ArchitectureError: the family is not supported, or no tensor name matches the map.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    folder = ckpt.root if ckpt.root.is_dir() else ckpt.root.parent
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"cannot read config.json in '{folder}': {first}") from None
    family = str(getattr(config, "model_type", ""))
    blocks = block_weights(family)
    with torch.device("meta"):
        model = _meta_model(config, AutoModelForCausalLM, AutoModel)
    arch = _map_with_base(model)
    probe = f"{arch.spec.layers}.0.{arch.spec.o_proj}.weight"
    matches = sorted((name[: -len(probe)] for name in ckpt.names() if name.endswith(probe)), key=len)
    if not matches or (matches[0] and not matches[0].endswith(".")):
        raise ArchitectureError(f"no tensor of the checkpoint is named like '{probe}'; is it a {family} checkpoint?")
    return Skeleton(arch=arch, blocks=blocks, prefix=matches[0])


def _meta_model(config: Any, causal: Any, bare: Any) -> nn.Module:
    """The class the checkpoint was saved from (``config.architectures``), else a causal LM, else the bare model."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(name), None)
        if cls is not None and hasattr(cls, "_from_config"):
            model: nn.Module = cls._from_config(config)
            return model
    try:
        model = causal.from_config(config)
    except ValueError:
        model = bare.from_config(config)
    return model


def _map_with_base(model: nn.Module) -> ModelMap:
    """`build_map` of ``model``, or of its base model when only that one matches the family row (BERT heads)."""
    try:
        return build_map(model)
    except ArchitectureError:
        base = getattr(model, "base_model", None)
        if isinstance(base, nn.Module) and base is not model:
            return build_map(base)
        raise


@dataclass(frozen=True)
class AttentionWeights:
    """One layer's attention projections, split per head (``nn.Linear`` orientation: ``[out, in]``).

    Attributes:
        w_q: ``[head, head_dim, d_model]``; b_q: ``[head, head_dim]`` or None.
        w_k, w_v: ``[kv_head, head_dim, d_model]``; b_k, b_v: ``[kv_head, head_dim]`` or None.
        w_o: ``[head, d_model, head_dim]`` (the output projection's columns of each head).
        scaling: the factor the model multiplies query-key dot products by (``attn.scaling``).
        q_norm, k_norm: norms applied to queries / keys, or None.
        qk_norm_per_head: whether those norms act on each head (``[n, head, head_dim]``) rather than on
            all heads at once (``[n, head * head_dim]``).
    """

    w_q: Tensor
    b_q: Tensor | None
    w_k: Tensor
    b_k: Tensor | None
    w_v: Tensor
    b_v: Tensor | None
    w_o: Tensor
    scaling: float
    q_norm: VectorFn | None = None
    k_norm: VectorFn | None = None
    qk_norm_per_head: bool = True


@dataclass(frozen=True)
class LayerWeights:
    """What one layer needs to read directions: its norms, attention projections and MLP.

    Attributes:
        layer: the layer index.
        attn_norm, mlp_norm: the pre-attention / pre-MLP norm (identity for post-norm layers).
        attention: the per-head projections.
        mlp: the MLP as a function of ``[n, d_model]`` inputs, or None when it cannot be built from the
            checkpoint (``mlp_note`` says why).
    """

    layer: int
    attn_norm: VectorFn
    mlp_norm: VectorFn
    attention: AttentionWeights
    mlp: VectorFn | None
    mlp_note: str | None = None


def read_layer(ckpt: Checkpoint, skeleton: Skeleton, layer: int) -> LayerWeights:
    """Read the tensors of layer ``layer`` that read the residual stream (see the module docstring).

    Raises:
        WeightFileError: a needed tensor is missing from the checkpoint.
    """
    blocks = skeleton.blocks
    attention = _attention(ckpt, skeleton, layer)
    mlp: VectorFn | None = None
    note: str | None = None
    try:
        sources = dict(blocks.mlp_sources)
        modules = [
            _materialise(ckpt, skeleton, layer, path, sources if index == 0 else {})
            for index, path in enumerate(blocks.mlp)
        ]
        mlp = _chain(modules)
    except _MissingTensors as missing:
        kind = "MoE" if layer in skeleton.arch.moe_layers else "MLP"
        note = (
            f"{kind} response not computed for layer {layer}: the checkpoint has no tensor '{missing.name}' "
            "(add its layout to archmap.BLOCK_WEIGHTS mlp_sources; attention results are unaffected)"
        )
    return LayerWeights(
        layer=layer,
        attn_norm=_norm(ckpt, skeleton, layer, blocks.attn_norm),
        mlp_norm=_norm(ckpt, skeleton, layer, blocks.mlp_norm),
        attention=attention,
        mlp=mlp,
        mlp_note=note,
    )


class _MissingTensors(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _materialise(
    ckpt: Checkpoint,
    skeleton: Skeleton,
    layer: int,
    path: str,
    sources: dict[str, tuple[str, ...]] | None = None,
) -> nn.Module:
    """A copy of the meta module at ``path`` in layer ``layer`` holding the checkpoint's tensors.

    A parameter missing under its own name is built from ``sources`` (`BlockWeights.mlp_sources`).
    """
    meta = skeleton.arch.layer(layer).get_submodule(path)
    module = copy.deepcopy(meta)
    prefix = skeleton.layer_path(layer, path)
    state: dict[str, Tensor] = {}
    for key in module.state_dict():
        name = f"{prefix}.{key}"
        if name in ckpt:
            state[key] = ckpt.read(name)
        elif sources and key in sources:
            state[key] = _assemble(ckpt, skeleton, layer, sources[key])
        else:
            raise _MissingTensors(name)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def _assemble(ckpt: Checkpoint, skeleton: Skeleton, layer: int, patterns: tuple[str, ...]) -> Tensor:
    """Concatenate ``patterns`` (first axis); with ``{e}`` in them, do so per expert and stack the experts."""

    def cat(names: list[str]) -> Tensor:
        for name in names:
            if name not in ckpt:
                raise _MissingTensors(name)
        return torch.cat([ckpt.read(name) for name in names])

    paths = [skeleton.layer_path(layer, pattern) for pattern in patterns]
    if not any("{e}" in path for path in paths):
        return cat(paths)
    experts = range(skeleton.arch.n_experts)
    return torch.stack([cat([path.replace("{e}", str(e)) for path in paths]) for e in experts])


def _chain(modules: list[nn.Module]) -> VectorFn:
    def run(x: Tensor) -> Tensor:
        out: Any = x.unsqueeze(0)
        with torch.no_grad():
            for module in modules:
                out = module(out)
                if isinstance(out, tuple):
                    out = out[0]
        result: Tensor = out.reshape(x.shape[0], -1)
        return result

    return run


def _identity(x: Tensor) -> Tensor:
    return x


def _norm(ckpt: Checkpoint, skeleton: Skeleton, layer: int, path: str | None) -> VectorFn:
    if path is None:
        return _identity
    try:
        return _chain([_materialise(ckpt, skeleton, layer, path)])
    except _MissingTensors as missing:
        raise WeightFileError(f"the checkpoint has no tensor '{missing.name}' (norm of layer {layer})") from None


def _read(ckpt: Checkpoint, name: str, *, optional: bool = False) -> Tensor | None:
    if name in ckpt:
        return ckpt.read(name)
    if optional:
        return None
    raise WeightFileError(f"the checkpoint has no tensor '{name}'")


def _linear(ckpt: Checkpoint, prefix: str, conv1d: bool) -> tuple[Tensor, Tensor | None]:
    """Weight in ``[out, in]`` orientation and bias of the projection at ``prefix``."""
    weight = _read(ckpt, f"{prefix}.weight")
    assert weight is not None
    bias = _read(ckpt, f"{prefix}.bias", optional=True)
    return (weight.T.contiguous() if conv1d else weight), bias


def _attention(ckpt: Checkpoint, skeleton: Skeleton, layer: int) -> AttentionWeights:
    arch, blocks = skeleton.arch, skeleton.blocks
    heads, kv_heads, head_dim, d_model = arch.n_heads, arch.n_kv_heads, arch.head_dim, arch.d_model
    projections: dict[str, tuple[Tensor, Tensor | None]] = {}
    if blocks.qkv is not None:
        weight, bias = _linear(ckpt, skeleton.layer_path(layer, blocks.qkv), blocks.conv1d)
        if blocks.qkv_layout == "per_head":
            per_head_parts = weight.view(heads, 3, head_dim, d_model).unbind(1)
            parts_w = tuple(w.reshape(heads * head_dim, d_model) for w in per_head_parts)
            parts_b = (
                tuple(b.reshape(heads * head_dim) for b in bias.view(heads, 3, head_dim).unbind(1))
                if bias is not None
                else (None, None, None)
            )
        else:
            sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
            parts_w = torch.split(weight, sizes, dim=0)
            parts_b = torch.split(bias, sizes, dim=0) if bias is not None else (None, None, None)
        for key, w, b in zip("qkv", parts_w, parts_b, strict=True):
            projections[key] = (w, b)
    else:
        for key in "qkv":
            path = getattr(blocks, key)
            if path is None:
                raise ArchitectureError(f"the {arch.family} row of archmap.BLOCK_WEIGHTS names no '{key}' projection")
            projections[key] = _linear(ckpt, skeleton.layer_path(layer, path), blocks.conv1d)
    w_o, _ = _linear(ckpt, skeleton.layer_path(layer, arch.spec.o_proj), blocks.conv1d)

    def per_head(key: str, n: int) -> tuple[Tensor, Tensor | None]:
        w, b = projections[key]
        if w.shape != (n * head_dim, d_model):
            raise WeightFileError(
                f"layer {layer} {key} projection has shape {tuple(w.shape)}, expected {(n * head_dim, d_model)}"
            )
        return w.reshape(n, head_dim, d_model), (b.reshape(n, head_dim) if b is not None else None)

    w_q, b_q = per_head("q", heads)
    w_k, b_k = per_head("k", kv_heads)
    w_v, b_v = per_head("v", kv_heads)
    if w_o.shape != (d_model, heads * head_dim):
        raise WeightFileError(f"layer {layer} output projection has shape {tuple(w_o.shape)}")
    attn = arch.layer(layer).get_submodule(arch.spec.attn)
    scaling = float(getattr(attn, "scaling", head_dim**-0.5))
    q_norm = k_norm = None
    per_head_norm = True
    if blocks.q_norm is not None and blocks.k_norm is not None:
        q_norm = _norm(ckpt, skeleton, layer, blocks.q_norm)
        k_norm = _norm(ckpt, skeleton, layer, blocks.k_norm)
        width = _read(ckpt, f"{skeleton.layer_path(layer, blocks.q_norm)}.weight")
        per_head_norm = width is not None and width.numel() == head_dim
    return AttentionWeights(
        w_q=w_q,
        b_q=b_q,
        w_k=w_k,
        b_k=b_k,
        w_v=w_v,
        b_v=b_v,
        w_o=w_o.reshape(d_model, heads, head_dim).permute(1, 0, 2).contiguous(),
        scaling=scaling,
        q_norm=q_norm,
        k_norm=k_norm,
        qk_norm_per_head=per_head_norm,
    )
