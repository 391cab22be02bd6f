"""The family rows: where each model family keeps the parts mechscope hooks.

A `FamilySpec` is one declarative row: dotted module paths (the layer list from the model root, the rest
relative to one layer) for the parts our sites hook. `mechscope.models.archmap.ModelMap` binds a row to a
loaded model. Adding a family means adding one row to `FAMILIES` (and one to
`mechscope.models.block_weights.BLOCK_WEIGHTS` for weight-based analyses) and one test parameter.

Conventions shared by every row:

* ``attn_out`` / ``mlp_out`` name the module whose output is what the block adds to the residual stream
  (for post-norm families such as Gemma-2/3 and OLMo-2 that is the norm after the block). Granite-MoE
  scales that output by ``config.residual_multiplier`` before adding it.
* ``o_proj`` is the attention output projection; its input is the concatenation of the per-head outputs,
  which is what the ``head_out`` site reads.
* ``attn`` is the module returning ``(output, weights)``; ``weights`` is what ``attn_pattern`` reads.
* ``router`` returns ``(router_logits, top_k_weights, top_k_index)``, as every transformers 5 MoE router
  does; ``experts`` is the packed-experts module called as ``experts(hidden, top_k_index, top_k_weights)``.
* ``routing`` (MoE families) says how the router turns its logits into the chosen experts' weights, as the
  family's transformers 5 router ``forward`` computes it, and what else the MoE block holds (a shared
  expert, its gate, packed or per-module experts); see `RoutingSpec`.
* ``output_transform`` names the config attributes the model applies, in order, to the unembedding's output
  to get its logits (what each does is in `OUTPUT_TRANSFORMS`); ``residual_scale`` names the config
  attribute the block outputs are multiplied by before being added to the residual (Granite).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Kind = Literal["decoder", "encoder"]
Op = Literal["multiply", "divide", "softcap"]
#: ``softmax_topk``: softmax over every expert's logit, then the k largest probabilities are the weights;
#: ``topk_softmax``: the k largest logits, then a softmax over just those k.
RouterRule = Literal["softmax_topk", "topk_softmax"]

#: Config attributes that turn the unembedding's output into the model's logits, and how: ``multiply`` and
#: ``divide`` by the value, ``softcap`` is ``tanh(logits / value) * value``. A value of None is a no-op.
OUTPUT_TRANSFORMS: dict[str, Op] = {
    "logit_scale": "multiply",  # Cohere, Cohere-2
    "lm_head_multiplier": "multiply",  # Falcon-H1
    "logits_scaling": "divide",  # Granite, Granite-MoE, MiniCPM-3
    "final_logit_softcapping": "softcap",  # Gemma-2/3/4
    "logits_soft_cap": "softcap",  # RecurrentGemma
}


@dataclass(frozen=True)
class RoutingSpec:
    """How a MoE family routes, read off its transformers 5 modeling code (``*TopKRouter.forward``).

    Attributes:
        rule: the order of softmax and top-k (see `RouterRule`).
        renormalise: whether ``softmax_topk`` divides the k weights by their sum (so that they sum to 1);
            a string names the config flag that decides (``norm_topk_prob``).
        shared_expert: path, inside a layer, of an expert every token goes through (None: there is none).
        shared_expert_gate: path of the linear gate whose sigmoid scales the shared expert (None: ungated).
        packed_experts: the experts module keeps every expert in 3-D tensors ``[expert, ...]`` (transformers
            5), rather than one submodule per expert.

    Examples:
        >>> FAMILIES["mixtral"].routing  # softmax over all experts, top-k, then weights renormalised to sum 1
        RoutingSpec(rule='softmax_topk', renormalise=True, shared_expert=None, shared_expert_gate=None,
        packed_experts=True)
        >>> qwen = FAMILIES["qwen2_moe"].routing  # the config decides; a gated shared expert besides the routed ones
        >>> qwen.renormalise, qwen.shared_expert, qwen.shared_expert_gate
        ('norm_topk_prob', 'mlp.shared_expert', 'mlp.shared_expert_gate')
        >>> RoutingSpec("topk_softmax")  # a new family's row: top-k logits, then a softmax over just those
        RoutingSpec(rule='topk_softmax', renormalise=False, shared_expert=None, shared_expert_gate=None,
        packed_experts=True)
    """

    rule: RouterRule
    renormalise: bool | str = False
    shared_expert: str | None = None
    shared_expert_gate: str | None = None
    packed_experts: bool = True


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
    output_transform: tuple[str, ...] = ()
    residual_scale: str | None = None
    routing: RoutingSpec | None = None
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
# Qwen2/3-MoE and OLMoE renormalise the top-k probabilities only when the config says so.
_NORM_TOPK = RoutingSpec("softmax_topk", renormalise="norm_topk_prob")

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
    "gemma2": replace(
        _POST_NORM,
        output_transform=("final_logit_softcapping",),
        note="attn_out/mlp_out are the post-block norms; logits soft-capped",
    ),
    "gemma3_text": replace(
        _POST_NORM, output_transform=("final_logit_softcapping",), note="attn_out/mlp_out are the post-block norms"
    ),
    "olmo2": replace(_POST_NORM, note="attn_out/mlp_out are the post-block norms"),
    "mixtral": replace(_MOE_GATE, routing=RoutingSpec("softmax_topk", renormalise=True)),
    "qwen2_moe": replace(
        _MOE_GATE,
        routing=replace(_NORM_TOPK, shared_expert="mlp.shared_expert", shared_expert_gate="mlp.shared_expert_gate"),
        note="mlp_out includes the gated shared expert",
    ),
    "qwen3_moe": replace(_MOE_GATE, routing=_NORM_TOPK),
    "olmoe": replace(_MOE_GATE, routing=_NORM_TOPK),
    "gpt_oss": replace(
        _LLAMA_LIKE, router="mlp.router", experts="mlp.experts", routing=RoutingSpec("topk_softmax")
    ),  # its router's logits include a bias
    "granitemoe": replace(
        _LLAMA_LIKE,
        mlp_out="block_sparse_moe",
        router="block_sparse_moe.router",
        experts="block_sparse_moe.experts",
        routing=RoutingSpec("topk_softmax"),
        output_transform=("logits_scaling",),
        residual_scale="residual_multiplier",
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


def supported_families() -> dict[str, FamilySpec]:
    """The families with an explicit row, keyed by ``model_type``.

    Examples:
        >>> families = supported_families()
        >>> len(families), sorted(name for name, spec in families.items() if spec.routing is not None)
        (18, ['gpt_oss', 'granitemoe', 'mixtral', 'olmoe', 'qwen2_moe', 'qwen3_moe'])
        >>> families["gpt2"].layers, families["gpt2"].o_proj, families["bert"].kind
        ('transformer.h', 'attn.c_proj', 'encoder')
    """
    return dict(FAMILIES)
