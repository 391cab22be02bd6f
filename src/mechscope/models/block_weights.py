"""Block weights: where a layer keeps the tensors that read a residual-stream direction.

Used by `mechscope.weights.directions`, which pushes directions through checkpoint weights without a
forward pass. One `BlockWeights` row per transformers ``model_type``, alongside the site rows in
`mechscope.models.families`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from mechscope.errors import ArchitectureError

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
