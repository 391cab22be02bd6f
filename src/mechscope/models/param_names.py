"""Parameter-name vocabulary: checkpoint tensor names -> (layer index, block type).

The weight tools read checkpoint files without building a model, so they see only tensor names. These
tables are the family knowledge needed to name what each tensor is; `mechscope.weights.blocks` applies
them. They cover the names every family in `mechscope.models.families` writes with transformers'
``save_pretrained`` (which may differ from the loaded model's parameter names: Mixtral, Qwen-MoE and OLMoE
checkpoints keep one tensor per expert, Granite-MoE keeps ``input_linear``/``output_linear``), the original
hub checkpoints of those families, and llama.cpp's GGUF names.

Decisions worth knowing:

* Fused projections keep one type: ``c_attn`` / ``query_key_value`` / ``qkv_proj`` are ``qkv``; Phi-3's
  ``gate_up_proj`` (gate and up rows concatenated) and GPT-2's ``c_fc`` are ``mlp_up``.
* Every expert tensor is ``expert``, whether stacked (``mlp.experts.gate_up_proj`` of shape
  [experts, ...], Granite's ``input_linear``) or one per expert (``experts.3.w1``); expert biases too.
* Qwen2-MoE's shared expert is an always-on dense MLP, so its projections are mlp_gate / mlp_up /
  mlp_down; its ``shared_expert_gate`` (a [1, d_model] sigmoid gate computed from the token, deciding how
  much of the shared expert is used) is a ``router``.
* Every norm weight and bias is ``norm``, including BERT's embedding LayerNorm and Qwen3/OLMo-2's
  q_norm / k_norm. Position and token-type embeddings are ``embedding``.
* Buffers that some checkpoints carry (``position_ids``, rotary ``inv_freq``, GPT-2's causal-mask
  ``attn.bias``), GPT-OSS attention ``sinks`` and BERT's pooler are ``other``.
"""

from __future__ import annotations

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
