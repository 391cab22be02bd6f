"""Name what a checkpoint tensor is: its layer index and block type, from its name alone.

The vocabulary (which names mean what, per family) lives in `mechscope.models.archmap`
(``PARAM_LAYER_PATTERN`` and ``PARAM_BLOCK_RULES``), the one module that holds family knowledge; this
module compiles and applies it.

Examples:
    >>> classify("model.layers.3.self_attn.o_proj.weight")
    (3, 'o_proj')
    >>> classify("transformer.h.0.attn.c_attn.weight")
    (0, 'qkv')
    >>> classify("model.layers.1.mlp.experts.gate_up_proj", (4, 64, 64))
    (1, 'expert')
    >>> classify("blk.7.ffn_gate_inp.weight")
    (7, 'router')
    >>> classify("lm_head.weight")
    (None, 'output')
"""

from __future__ import annotations

import re
from functools import lru_cache

from mechscope.models.param_names import PARAM_BLOCK_RULES, PARAM_LAYER_PATTERN

#: Every block type a tensor can have (``qkv`` is a fused query/key/value projection; ``expert`` is any
#: MoE expert tensor, stacked or per expert; ``other`` is anything else, e.g. buffers or a pooler).
BLOCK_TYPES: tuple[str, ...] = (
    "embedding",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv",
    "mlp_gate",
    "mlp_up",
    "mlp_down",
    "router",
    "expert",
    "norm",
    "output",
    "other",
)

_LAYER = re.compile(PARAM_LAYER_PATTERN)
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(rx), block) for rx, block in PARAM_BLOCK_RULES)
_UNKNOWN = sorted({block for _, block in PARAM_BLOCK_RULES} - set(BLOCK_TYPES))
if _UNKNOWN:  # a typo in the vocabulary table must fail at import, not produce a silent new category
    raise ValueError(f"archmap.PARAM_BLOCK_RULES uses unknown block types {_UNKNOWN}")
_MLP_BLOCKS = frozenset({"mlp_gate", "mlp_up", "mlp_down"})


def layer_index(name: str) -> int | None:
    """The layer a tensor belongs to: the integer after ``layers.``/``h.``/``layer.``/``blocks.``/``blk.``.

    Returns None for tensors outside the layer stack (embeddings, final norm, unembedding).
    """
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


@lru_cache(maxsize=65536)
def _block_of(name: str) -> str:
    for pattern, block in _RULES:
        if pattern.search(name):
            return block
    return "other"


def classify(name: str, shape: tuple[int, ...] | None = None) -> tuple[int | None, str]:
    """The ``(layer_index, block_type)`` of the checkpoint tensor called ``name``.

    Args:
        name: The tensor's name in the checkpoint (safetensors / ``.bin`` key, or a GGUF tensor name).
        shape: The tensor's shape, if known. A 3-D (or higher) tensor that the name alone would call an MLP
            projection is a stack of experts and is classified ``expert``.

    Returns:
        The layer index (None outside the layer stack) and one of `BLOCK_TYPES`.
    """
    block = _block_of(name)
    if shape is not None and len(shape) >= 3 and block in _MLP_BLOCKS:
        block = "expert"
    return layer_index(name), block
