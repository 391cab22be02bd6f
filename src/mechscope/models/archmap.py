"""Where each model family keeps its parts: the only module in mechscope that knows model families.

A `FamilySpec` is one declarative row: dotted module paths (the layer list from the model root, the rest
relative to one layer) for the parts our sites hook. `ModelMap` binds a spec to a loaded model, checks
that every named module exists, and answers questions such as "which module's output is layer 3's MLP
contribution to the residual stream?". Adding a family means adding one row to `FAMILIES` and one test
parameter.

Conventions shared by every row:

* ``attn_out`` / ``mlp_out`` name the module whose output is what the block adds to the residual stream
  (for post-norm families such as Gemma-2/3 and OLMo-2 that is the norm after the block). Granite-MoE
  scales that output by ``config.residual_multiplier`` before adding it.
* ``o_proj`` is the attention output projection; its input is the concatenation of the per-head outputs,
  which is what the ``head_out`` site reads.
* ``attn`` is the module returning ``(output, weights)``; ``weights`` is what ``attn_pattern`` reads.
* ``router`` returns ``(router_logits, top_k_weights, top_k_index)``, as every transformers 5 MoE router
  does; ``experts`` is the packed-experts module called as ``experts(hidden, top_k_index, top_k_weights)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mechscope.errors import ArchitectureError

logger = logging.getLogger(__name__)

Kind = Literal["decoder", "encoder"]


@dataclass(frozen=True)
class FamilySpec:
    """Module paths of one model family (see the module docstring for what each names)."""

    layers: str
    embed: str
    attn: str
    o_proj: str
    attn_out: str
    mlp_out: str
    final_norm: str | None = None
    unembed: str | None = None
    router: str | None = None
    experts: str | None = None
    kind: Kind = "decoder"
    note: str = ""


_LLAMA_LIKE = FamilySpec(
    layers="model.layers",
    embed="model.embed_tokens",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    attn_out="self_attn",
    mlp_out="mlp",
    final_norm="model.norm",
    unembed="lm_head",
)
_POST_NORM = replace(_LLAMA_LIKE, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm")
_MOE_GATE = replace(_LLAMA_LIKE, router="mlp.gate", experts="mlp.experts")

#: One row per transformers ``model_type``.
FAMILIES: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(
        layers="transformer.h",
        embed="transformer.wte",
        attn="attn",
        o_proj="attn.c_proj",
        attn_out="attn",
        mlp_out="mlp",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        note="learned positions are added after `embed`, so resid_pre.0 = embed + position embedding",
    ),
    "gpt_neox": FamilySpec(
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        attn="attention",
        o_proj="attention.dense",
        attn_out="attention",
        mlp_out="mlp",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        note="parallel residual: attention and MLP both read resid_pre",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma": replace(_LLAMA_LIKE, note="embedding is scaled by sqrt(d_model) inside `embed`"),
    "gemma2": replace(_POST_NORM, note="attn_out/mlp_out are the post-block norms; logits soft-capped"),
    "gemma3_text": replace(_POST_NORM, note="attn_out/mlp_out are the post-block norms"),
    "olmo2": replace(_POST_NORM, note="attn_out/mlp_out are the post-block norms"),
    "mixtral": _MOE_GATE,
    "qwen2_moe": replace(_MOE_GATE, note="mlp_out includes the gated shared expert"),
    "qwen3_moe": _MOE_GATE,
    "olmoe": _MOE_GATE,
    "gpt_oss": replace(_LLAMA_LIKE, router="mlp.router", experts="mlp.experts"),
    "granitemoe": replace(
        _LLAMA_LIKE,
        mlp_out="block_sparse_moe",
        router="block_sparse_moe.router",
        experts="block_sparse_moe.experts",
        note="the residual adds attn_out/mlp_out x residual_multiplier; embeddings x embedding_multiplier",
    ),
    "bert": FamilySpec(
        layers="encoder.layer",
        embed="embeddings.word_embeddings",
        attn="attention.self",
        o_proj="attention.output.dense",
        attn_out="attention.output.dense",
        mlp_out="output.dense",
        kind="encoder",
        note="encoder: attn_out/mlp_out are the dense projections before each post-LayerNorm; no lens",
    ),
}

# ---------------------------------------------------------------------------------------------------------
# Block weights: where a layer keeps the tensors that read a residual-stream direction (used by
# `mechscope.weights.directions`, which pushes directions through checkpoint weights without a forward pass).
# ---------------------------------------------------------------------------------------------------------

QkvLayout = Literal["stacked", "per_head"]


@dataclass(frozen=True)
class BlockWeights:
    """Module paths, relative to one layer, of the parts that read the residual stream.

    Attributes:
        attn_norm: the norm in front of attention (None for post-norm layers: OLMo-2, BERT).
        mlp_norm: the norm in front of the MLP (None for OLMo-2 and BERT).
        q, k, v: separate query / key / value projections (None when fused).
        qkv: a fused query-key-value projection (Phi-3, GPT-2, GPT-NeoX).
        qkv_layout: ``stacked``: outputs are ``[q (all heads); k; v]`` (Phi-3, GPT-2); ``per_head``: outputs
            are ``[head, (q, k, v), head_dim]`` (GPT-NeoX).
        conv1d: projections store ``[in, out]`` (GPT-2's ``Conv1D``) instead of ``nn.Linear``'s ``[out, in]``.
        q_norm, k_norm: norms applied to queries / keys after projection (Qwen-3, Gemma-3, OLMo-2, OLMoE);
            the norm's width says whether it acts per head or on all heads at once.
        mlp: modules applied in order to the normed input; their composition is the block's MLP (BERT splits
            it in two, the second before its post-LayerNorm).
        mlp_sources: where checkpoints in the family's original layout (as transformers saves them) keep
            parameters of the first ``mlp`` module that they do not store under its own name: pairs of a
            parameter name relative to that module and the tensor names, relative to the layer, it is built
            from. ``{e}`` stands for every expert (the results are stacked along a new first axis); several
            names are concatenated along their first axis (e.g. an expert's gate and up projections).
    """

    attn_norm: str | None
    mlp_norm: str | None
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    qkv_layout: QkvLayout = "stacked"
    conv1d: bool = False
    q_norm: str | None = None
    k_norm: str | None = None
    mlp: tuple[str, ...] = ("mlp",)
    mlp_sources: tuple[tuple[str, tuple[str, ...]], ...] = ()


_PER_EXPERT_SOURCES = (
    ("experts.gate_up_proj", ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")),
    ("experts.down_proj", ("mlp.experts.{e}.down_proj.weight",)),
)
_PRE_NORM_BLOCK = BlockWeights(
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
)
_QK_NORMED_BLOCK = replace(_PRE_NORM_BLOCK, q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")

#: One row per transformers ``model_type``; families missing here are not supported by weight-based analyses.
BLOCK_WEIGHTS: dict[str, BlockWeights] = {
    "llama": _PRE_NORM_BLOCK,
    "mistral": _PRE_NORM_BLOCK,
    "qwen2": _PRE_NORM_BLOCK,
    "qwen3": _QK_NORMED_BLOCK,
    "gemma": _PRE_NORM_BLOCK,
    "gemma2": replace(_PRE_NORM_BLOCK, mlp_norm="pre_feedforward_layernorm"),
    "gemma3_text": replace(_QK_NORMED_BLOCK, mlp_norm="pre_feedforward_layernorm"),
    "olmo2": replace(_QK_NORMED_BLOCK, attn_norm=None, mlp_norm=None),
    "phi3": replace(_PRE_NORM_BLOCK, q=None, k=None, v=None, qkv="self_attn.qkv_proj"),
    "mixtral": replace(
        _PRE_NORM_BLOCK,
        mlp_sources=(
            ("gate.weight", ("block_sparse_moe.gate.weight",)),
            (
                "experts.gate_up_proj",
                ("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight"),
            ),
            ("experts.down_proj", ("block_sparse_moe.experts.{e}.w2.weight",)),
        ),
    ),
    "qwen2_moe": replace(_PRE_NORM_BLOCK, mlp_sources=_PER_EXPERT_SOURCES),
    "qwen3_moe": replace(_QK_NORMED_BLOCK, mlp_sources=_PER_EXPERT_SOURCES),
    "olmoe": replace(_QK_NORMED_BLOCK, mlp_sources=_PER_EXPERT_SOURCES),
    "gpt_oss": _PRE_NORM_BLOCK,
    "granitemoe": replace(
        _PRE_NORM_BLOCK,
        mlp=("block_sparse_moe",),
        mlp_sources=(
            ("experts.gate_up_proj", ("block_sparse_moe.input_linear.weight",)),
            ("experts.down_proj", ("block_sparse_moe.output_linear.weight",)),
            ("router.weight", ("block_sparse_moe.router.layer.weight",)),
        ),
    ),
    "gpt2": BlockWeights(attn_norm="ln_1", mlp_norm="ln_2", qkv="attn.c_attn", conv1d=True),
    "gpt_neox": BlockWeights(
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        qkv="attention.query_key_value",
        qkv_layout="per_head",
    ),
    "bert": BlockWeights(
        attn_norm=None,
        mlp_norm=None,
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        mlp=("intermediate", "output.dense"),
    ),
}


def block_weights(family: str) -> BlockWeights:
    """The `BlockWeights` row of ``family`` (a transformers ``model_type``).

    Raises:
        ArchitectureError: the family has no row; the message lists the supported families.
    """
    row = BLOCK_WEIGHTS.get(family)
    if row is None:
        raise ArchitectureError(
            f"weight-based direction analysis does not support model_type '{family}'; "
            f"supported: {', '.join(sorted(BLOCK_WEIGHTS))}"
        )
    return row


# ---------------------------------------------------------------------------------------------------------
# end of block weights
# ---------------------------------------------------------------------------------------------------------

# Config attribute names to try, in order, for each dimension. transformers' attribute_map already
# translates most legacy names (GPT-2's n_embd ...), the fallbacks cover the rest.
_DIM_ATTRS: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "n_heads": ("num_attention_heads", "n_head"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "vocab": ("vocab_size",),
}
_EXPERT_ATTRS = ("num_local_experts", "num_experts", "n_routed_experts")
_TOPK_ATTRS = ("num_experts_per_tok", "moe_top_k", "top_k")

# Names generic discovery tries for families with no row, most common first.
_ATTN_NAMES = ("self_attn", "attention", "attn", "self_attention")
_O_PROJ_NAMES = ("o_proj", "dense", "c_proj", "out_proj", "wo")
_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn")
_ROUTER_NAMES = ("gate", "router")
_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "final_norm")


def _first_attr(config: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


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


def supported_families() -> dict[str, FamilySpec]:
    """The families with an explicit row, keyed by ``model_type``."""
    return dict(FAMILIES)


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
        moe_layers = tuple(i for i, layer in enumerate(layers) if _has_submodule(layer, spec.router))
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
    if not _has_submodule(model, spec.layers) and _has_submodule(model, spec.layers.split(".", 1)[-1]):

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
    if spec.unembed is not None and not _has_submodule(model, spec.unembed):
        getter: Any = getattr(model, "get_output_embeddings", None)
        head = getter() if callable(getter) else None
        path = _path_of(model, head) if isinstance(head, nn.Module) else None
        spec = replace(spec, unembed=path)
    return spec


def _dimensions(config: Any, model_type: str) -> dict[str, int]:
    dims: dict[str, int] = {}
    for name, attrs in _DIM_ATTRS.items():
        value = _first_attr(config, attrs)
        if value is None:
            raise ArchitectureError(
                f"config of model_type '{model_type}' has none of {', '.join(attrs)} (needed for {name})"
            )
        dims[name] = int(value)
    dims["n_kv_heads"] = int(getattr(config, "num_key_value_heads", None) or dims["n_heads"])
    dims["head_dim"] = int(getattr(config, "head_dim", None) or dims["d_model"] // dims["n_heads"])
    dims["n_experts"] = int(_first_attr(config, _EXPERT_ATTRS) or 0)
    dims["top_k"] = int(_first_attr(config, _TOPK_ATTRS) or 0) if dims["n_experts"] else 0
    return dims


def _has_submodule(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def _path_of(root: nn.Module, target: nn.Module) -> str | None:
    for name, module in root.named_modules():
        if module is target:
            return str(name)
    return None


def _child_named(module: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(module.named_children())
    return next((name for name in names if name in children), None)


def discover_spec(model: nn.Module) -> FamilySpec:
    """Guess a `FamilySpec` for a family with no row, from common module names.

    The guess is explicit: every part it cannot find raises `ArchitectureError` naming that part, and
    `mechscope doctor` checks the result against ``output_hidden_states``.
    """
    n_layers = _first_attr(model.config, _DIM_ATTRS["n_layers"])
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if not candidates:
        raise ArchitectureError(
            f"cannot find the list of {n_layers} layers in {type(model).__name__}; "
            "add a row for this model_type to mechscope.models.archmap.FAMILIES"
        )
    layers_path, layers = candidates[0]
    layer = layers[0]
    attn = _child_named(layer, _ATTN_NAMES)
    mlp = _child_named(layer, _MLP_NAMES)
    if attn is None or mlp is None:
        missing = "attention" if attn is None else "MLP"
        raise ArchitectureError(
            f"cannot find the {missing} module in {type(layer).__name__} (children: "
            f"{', '.join(n for n, _ in layer.named_children())}); add a row to archmap.FAMILIES"
        )
    o_proj = _child_named(layer.get_submodule(attn), _O_PROJ_NAMES)
    if o_proj is None:
        raise ArchitectureError(f"cannot find the attention output projection in '{attn}'")
    getter: Any = getattr(model, "get_input_embeddings", None)
    embed = getter() if callable(getter) else None
    embed_path = _path_of(model, embed) if isinstance(embed, nn.Module) else None
    if embed_path is None:
        raise ArchitectureError("cannot find the input embedding module")
    parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    norm = _child_named(parent, _NORM_NAMES)
    router = _child_named(layer.get_submodule(mlp), _ROUTER_NAMES)
    experts = "experts" if _has_submodule(layer.get_submodule(mlp), "experts") else None
    join = (parent_path + ".") if parent_path else ""
    return FamilySpec(
        layers=layers_path,
        embed=embed_path,
        attn=attn,
        o_proj=f"{attn}.{o_proj}",
        attn_out=attn,
        mlp_out=mlp,
        final_norm=f"{join}{norm}" if norm else None,
        unembed="lm_head" if _has_submodule(model, "lm_head") else None,
        router=f"{mlp}.{router}" if router and experts else None,
        experts=f"{mlp}.experts" if router and experts else None,
        note="discovered",
    )


# ======================================================================================================
# Parameter-name vocabulary: checkpoint tensor names -> (layer index, block type).
#
# The weight tools read checkpoint files without building a model, so they see only tensor names. These
# tables are the family knowledge needed to name what each tensor is; `mechscope.weights.blocks` applies
# them. They cover the names every family above writes with transformers' ``save_pretrained`` (which may
# differ from the loaded model's parameter names: Mixtral, Qwen-MoE and OLMoE checkpoints keep one tensor
# per expert, Granite-MoE keeps ``input_linear``/``output_linear``), the original hub checkpoints of those
# families, and llama.cpp's GGUF names.
#
# Decisions worth knowing:
# * Fused projections keep one type: ``c_attn`` / ``query_key_value`` / ``qkv_proj`` are ``qkv``; Phi-3's
#   ``gate_up_proj`` (gate and up rows concatenated) and GPT-2's ``c_fc`` are ``mlp_up``.
# * Every expert tensor is ``expert``, whether stacked (``mlp.experts.gate_up_proj`` of shape
#   [experts, ...], Granite's ``input_linear``) or one per expert (``experts.3.w1``); expert biases too.
# * Qwen2-MoE's shared expert is an always-on dense MLP, so its projections are mlp_gate / mlp_up /
#   mlp_down; its ``shared_expert_gate`` (a [1, d_model] sigmoid gate computed from the token, deciding how
#   much of the shared expert is used) is a ``router``.
# * Every norm weight and bias is ``norm``, including BERT's embedding LayerNorm and Qwen3/OLMo-2's
#   q_norm / k_norm. Position and token-type embeddings are ``embedding``.
# * Buffers that some checkpoints carry (``position_ids``, rotary ``inv_freq``, GPT-2's causal-mask
#   ``attn.bias``), GPT-OSS attention ``sinks`` and BERT's pooler are ``other``.
# ======================================================================================================

#: The layer index is the integer after the first of these path components (``model.layers.3.``,
#: ``transformer.h.3.``, ``encoder.layer.3.``, ``blocks.3.``, GGUF ``blk.3.``).
PARAM_LAYER_PATTERN = r"(?:^|\.)(?:layers|h|layer|blocks|blk)\.(\d+)(?:\.|$)"

#: ``(regex, block_type)`` rules, searched in the full tensor name; the first that matches wins, so more
#: specific rules come first. A name no rule matches is ``other``.
PARAM_BLOCK_RULES: tuple[tuple[str, str], ...] = (
    # Buffers and odd parameters first, so that no projection rule claims them.
    (r"(?:^|\.)position_ids$", "other"),
    (r"\.inv_freq$", "other"),
    (r"(?:^|\.)attn\.(?:masked_)?bias$", "other"),  # GPT-2's causal mask buffer in old checkpoints
    (r"\.sinks$", "other"),  # GPT-OSS per-head attention sinks
    (r"(?:^|\.)pooler\.", "other"),  # BERT pooler (a sentence head, not part of the encoder)
    # llama.cpp GGUF names.
    (r"^token_embd\.", "embedding"),
    (r"^(?:position_embd|token_types)\.", "embedding"),
    (r"^output_norm\.", "norm"),
    (r"^output\.", "output"),
    (r"^rope_freqs\.", "other"),
    (r"^blk\.\d+\.[a-z_]*norm[a-z_]*\.", "norm"),
    (r"^blk\.\d+\.ffn_gate_inp(?:_shexp)?\.", "router"),
    (r"^blk\.\d+\.ffn_(?:gate|up|down|gate_up)_exps\.", "expert"),
    (r"^blk\.\d+\.attn_qkv\.", "qkv"),
    (r"^blk\.\d+\.attn_q\.", "q_proj"),
    (r"^blk\.\d+\.attn_k\.", "k_proj"),
    (r"^blk\.\d+\.attn_v\.", "v_proj"),
    (r"^blk\.\d+\.attn_output\.", "o_proj"),
    (r"^blk\.\d+\.ffn_gate(?:_shexp)?\.", "mlp_gate"),
    (r"^blk\.\d+\.ffn_up(?:_shexp)?\.", "mlp_up"),
    (r"^blk\.\d+\.ffn_down(?:_shexp)?\.", "mlp_down"),
    # Norms (LayerNorm, RMSNorm, ln_1, ln_f, q_norm, post_feedforward_layernorm ...).
    (r"(?:^|\.)(?:[A-Za-z_]*[Nn]orm[A-Za-z_]*|ln_\w+)\.(?:weight|bias)$", "norm"),
    # MoE: shared experts are dense MLPs, their gate is a router; then routers; then experts.
    (r"\.shared_experts?_gate\.", "router"),
    (r"\.shared_experts?\.(?:gate_proj|w1)\.", "mlp_gate"),
    (r"\.shared_experts?\.(?:up_proj|w3)\.", "mlp_up"),
    (r"\.shared_experts?\.(?:down_proj|w2)\.", "mlp_down"),
    (r"\.shared_mlp\.input_linear\.", "mlp_up"),  # Granite-MoE-shared: fused gate+up of the dense MLP
    (r"\.shared_mlp\.output_linear\.", "mlp_down"),
    (r"\.(?:mlp|block_sparse_moe|feed_forward|moe)\.(?:gate|router)(?:\.layer)?\.(?:weight|bias)$", "router"),
    (r"\.gate\.e_score_correction_bias$", "router"),
    (r"\.experts\.", "expert"),
    (r"\.block_sparse_moe\.(?:input_linear|output_linear)\.", "expert"),
    # Attention.
    (r"\.(?:c_attn|query_key_value|qkv_proj|Wqkv|qkv)(?:\.|$)", "qkv"),
    (r"\.(?:q_proj|query|wq)(?:\.|$)", "q_proj"),
    (r"\.(?:k_proj|key|wk)(?:\.|$)", "k_proj"),
    (r"\.(?:v_proj|value|wv)(?:\.|$)", "v_proj"),
    (r"\.(?:o_proj|out_proj)(?:\.|$)", "o_proj"),
    (
        r"\.(?:attn\.c_proj|attention\.dense|attention\.output\.dense|self_attention\.dense|attention\.wo)(?:\.|$)",
        "o_proj",
    ),
    # Dense MLP (BERT's layer-level ``output.dense`` comes after the attention rule that takes
    # ``attention.output.dense``).
    (r"\.(?:gate_proj|feed_forward\.w1)(?:\.|$)", "mlp_gate"),
    (r"\.(?:gate_up_proj|up_proj|c_fc|dense_h_to_4h|fc1|intermediate\.dense|feed_forward\.w3)(?:\.|$)", "mlp_up"),
    (r"\.(?:down_proj|mlp\.c_proj|dense_4h_to_h|fc2|feed_forward\.w2)(?:\.|$)", "mlp_down"),
    (r"(?:^|\.)layer\.\d+\.output\.dense\.", "mlp_down"),
    # Embeddings and unembedding.
    (r"(?:^|\.)(?:embed_tokens|wte|wpe|embed_in|tok_embeddings|word_embeddings|position_embeddings)\.", "embedding"),
    (r"(?:^|\.)(?:token_type_embeddings|embed_positions)\.", "embedding"),
    (r"(?:^|\.)embeddings\.", "embedding"),
    (r"(?:^|\.)(?:lm_head|embed_out)\.", "output"),
    (r"^output\.weight$", "output"),  # Meta's original llama layout
)
