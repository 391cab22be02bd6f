"""Tiny random-init Hugging Face models of many families, saved to disk for tests.

Each model is built from a config (nothing is downloaded), re-initialised deterministically so that
activations and MoE routing are non-trivial, and saved with ``save_pretrained`` next to a small
byte-level BPE tokenizer. Tests can then load the folder back through the real ``from_pretrained``
code paths, exactly as they would a checkpoint from the Hub.

Examples:
    >>> import tempfile
    >>> folder = build_tiny_model("llama", Path(tempfile.mkdtemp()) / "llama")
    >>> model = AutoModelForCausalLM.from_pretrained(folder)
    >>> type(model).__name__, model.config.num_hidden_layers, model.config.hidden_size
    ('LlamaForCausalLM', 2, 64)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CONFIG_MAPPING,
    AutoModel,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

FAMILIES: tuple[str, ...] = (
    "gpt2",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "gpt_oss",
    "granitemoe",
    "bert",
)
"""Supported ``model_type`` strings; ``bert`` is the only encoder."""

DISCOVERED_FAMILIES: tuple[str, ...] = ("cohere",)
"""``model_type`` strings with no row in the map, built to test discovery (Cohere: its ``logit_scale``)."""

_BOS, _EOS, _PAD, _UNK = "<bos>", "<eos>", "<pad>", "<unk>"
_TOKENIZER_VOCAB_SIZE = 250
_MODEL_VOCAB_SIZE = 256
_MATRIX_STD = 0.02
_ROUTER_STD = 0.5

_CORPUS: tuple[str, ...] = (
    "The capital of France is Paris.",
    "The capital of Germany is Berlin.",
    "The capital of Italy is Rome.",
    "The capital of Spain is Madrid.",
    "The capital of Japan is Tokyo.",
    "The capital of Canada is Ottawa.",
    "The capital of Egypt is Cairo.",
    "The capital of Kenya is Nairobi.",
    "Paris is a city on the river Seine.",
    "Rome is an old city with many churches.",
    "The cat sat on the mat and looked at the dog.",
    "A dog likes to run in the park with a ball.",
    "The horse eats hay in the barn every morning.",
    "Birds sing in the trees when the sun comes up.",
    "The fox is quick and the bear is slow.",
    "Fish swim in the sea, and frogs jump in the pond.",
    "An owl hunts mice at night.",
    "The elephant is the largest animal on land.",
    "It is sunny today, but it will rain tomorrow.",
    "The weather is cold and windy in the winter.",
    "In the summer the days are long and warm.",
    "Snow fell on the hills during the night.",
    "A storm is coming, so take an umbrella.",
    "The sky is blue and there are no clouds.",
    "Fog covers the valley early in the morning.",
    "She reads a book while the rain falls outside.",
    "He walks to the station at eight o'clock.",
    "We eat bread, cheese and apples for lunch.",
    "They count from one to ten: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "The train to London leaves at 9:30 from platform 4.",
    "Water boils at 100 degrees and freezes at 0 degrees.",
    "Is it true that the moon goes around the earth?",
    "Yes! The earth goes around the sun once a year.",
    "My friend has two cats, three dogs and a small bird.",
    "The children play in the garden after school.",
    "Please open the window; it is too hot in here.",
)

# Generic settings, under every name the families use. A key is kept for a family only when its config
# class declares it (as a field or through ``attribute_map``), so no stray attributes land in config.json.
_COMMON: dict[str, Any] = {
    "vocab_size": _MODEL_VOCAB_SIZE,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    "attention_dropout": 0.0,
    "hidden_dropout": 0.0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}

_MOE: dict[str, Any] = {"num_experts_per_tok": 2}

# Family-specific settings, applied after ``_COMMON``.
_FAMILY: dict[str, dict[str, Any]] = {
    "gpt2": {"n_inner": 128},
    "gemma2": {"sliding_window": 64, "query_pre_attn_scalar": 16},
    "gemma3_text": {"sliding_window": 64, "query_pre_attn_scalar": 16},
    "phi3": {"original_max_position_embeddings": 128},
    "mixtral": {**_MOE, "num_local_experts": 4, "intermediate_size": 32},
    "qwen2_moe": {
        **_MOE,
        "num_experts": 4,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "qwen3_moe": {
        **_MOE,
        "num_experts": 4,
        "moe_intermediate_size": 32,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "olmoe": {**_MOE, "num_experts": 4, "intermediate_size": 32},
    "gpt_oss": {**_MOE, "num_local_experts": 4, "intermediate_size": 32, "sliding_window": 64},
    "granitemoe": {**_MOE, "num_local_experts": 4, "intermediate_size": 32},
}

# Generic override names that a family's config does not map by itself.
_ALIASES: dict[str, dict[str, str]] = {"gpt2": {"intermediate_size": "n_inner"}}


def _train_tokenizer() -> PreTrainedTokenizerFast:
    """Trains the byte-level BPE tokenizer on the built-in corpus.

    Returns:
        The tokenizer, wrapped for ``transformers``, with bos/eos/pad/unk tokens set.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Seed the alphabet with printable ASCII (in its byte-level spelling) rather than all 256 bytes,
    # which would not fit in the vocabulary; other bytes fall back to <unk>.
    ascii_alphabet = sorted(set(_byte_level("".join(map(chr, range(32, 127))) + "\n")))
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB_SIZE,
        special_tokens=[_BOS, _EOS, _PAD, _UNK],
        initial_alphabet=ascii_alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_PAD,
        unk_token=_UNK,
        model_input_names=["input_ids", "attention_mask"],
    )


def _byte_level(text: str) -> str:
    """Spells ``text`` the way the byte-level pre-tokenizer does (e.g. a space becomes ``Ġ``)."""
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
    return "".join(piece for piece, _ in pieces)


def build_tokenizer(folder: Path) -> None:
    """Trains the tiny byte-level BPE tokenizer and saves it into ``folder``.

    The tokenizer has about 250 tokens, with ``<bos>``, ``<eos>``, ``<pad>`` and ``<unk>`` first, and
    adds no special tokens around the text. ``AutoTokenizer.from_pretrained(folder)`` loads it back.

    Args:
        folder: Destination folder; created if missing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _train_tokenizer().save_pretrained(folder)


def _config_kwargs(family: str, special_ids: dict[str, int], overrides: dict[str, Any]) -> dict[str, Any]:
    """Assembles the config keyword arguments for ``family``.

    Args:
        family: A ``model_type`` from ``FAMILIES``.
        special_ids: ``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` of the tokenizer.
        overrides: Caller overrides, applied last (before values derived from them).

    Returns:
        Keyword arguments for the family's config class.
    """
    config_class = CONFIG_MAPPING[family]
    known = {field.name for field in dataclasses.fields(config_class)} | set(config_class.attribute_map)
    kwargs = {key: value for key, value in _COMMON.items() if key in known}
    kwargs.update(_FAMILY.get(family, {}))
    kwargs.update(special_ids)
    if family != "bert":
        kwargs["tie_word_embeddings"] = False
    aliases = _ALIASES.get(family, {})
    kwargs.update({aliases.get(key, key): value for key, value in overrides.items()})

    if family == "gemma3_text" and "layer_types" not in kwargs:
        # The default pattern (5 sliding : 1 full) would make every layer of a small model sliding.
        kwargs["layer_types"] = [
            "full_attention" if i % 2 else "sliding_attention" for i in range(kwargs["num_hidden_layers"])
        ]
    if family == "gpt_oss" and "rope_parameters" not in kwargs:
        # YaRN like the released checkpoints, with a factor consistent with max_position_embeddings.
        factor = 4
        kwargs["rope_parameters"] = {
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": float(factor),
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": kwargs["max_position_embeddings"] // factor,
        }
    return kwargs


def _reinitialise(model: PreTrainedModel, seed: int) -> None:
    """Re-draws the weights so that activations and MoE routing are non-degenerate.

    Matrices, embeddings and expert tensors get ``normal(0, 0.02)``; MoE routers (modules named ``gate``
    or ``router``, weight and bias) get ``normal(0, 0.5)`` so that different tokens pick different
    experts. Other 1-D parameters (norm weights and biases) keep the family's own initialisation.

    Args:
        model: The freshly built model.
        seed: Seed of the generator that draws the weights.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            path = name.split(".")
            if "gate" in path or "router" in path:
                std = _ROUTER_STD
            elif param.dim() >= 2:
                std = _MATRIX_STD
            else:
                continue
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)


def build_tiny_model(family: str, folder: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Builds a tiny random-init model of ``family`` and saves it, with a tokenizer, into ``folder``.

    The default shape is 2 layers, hidden size 64, 4 heads of size 16 (2 key/value heads where the
    family supports grouped-query attention), MLP size 128, 128 positions and 256 vocabulary entries;
    MoE families have 4 experts of size 32 with top-2 routing. Dropout is off everywhere.

    Args:
        family: A ``model_type`` from ``FAMILIES`` or ``DISCOVERED_FAMILIES``.
        folder: Destination folder; created if missing.
        seed: Seed for the weights.
        **overrides: Config keyword arguments that replace the defaults; generic names such as
            ``hidden_size`` or ``num_hidden_layers`` also work for ``gpt2``.

    Returns:
        ``folder``, ready for ``from_pretrained``.

    Raises:
        ValueError: If ``family`` is not one of ``FAMILIES`` or ``DISCOVERED_FAMILIES``.
    """
    if family not in FAMILIES + DISCOVERED_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES + DISCOVERED_FAMILIES)}")
    tokenizer = _train_tokenizer()
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CONFIG_MAPPING[family](**_config_kwargs(family, special_ids, overrides))
    auto_class = AutoModel if family == "bert" else AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto_class.from_config(config)
    _reinitialise(model, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: The shape of GPT-2 small (random weights), used by the benchmarks.
GPT2_SMALL: dict[str, int] = {
    "num_hidden_layers": 12,
    "hidden_size": 768,
    "num_attention_heads": 12,
    "vocab_size": 50257,
    "intermediate_size": 3072,
    "max_position_embeddings": 1024,
}


def build_gpt2_small(folder: Path, *, seed: int = 0) -> Path:
    """A random-init model with GPT-2 small's shape (12 layers, d=768, vocab 50257), saved into ``folder``."""
    return build_tiny_model("gpt2", folder, seed=seed, **GPT2_SMALL)


def main(argv: list[str] | None = None) -> None:
    """``python -m mechscope.testing.tiny_models FAMILY FOLDER``: build one tiny model."""
    import argparse

    parser = argparse.ArgumentParser(description="Build a tiny random-init model of one family.")
    parser.add_argument("family", choices=FAMILIES + DISCOVERED_FAMILIES)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_model(args.family, args.folder, seed=args.seed))


if __name__ == "__main__":
    main()
