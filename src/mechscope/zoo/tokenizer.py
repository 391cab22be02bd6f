"""The organisms' tokenizer: byte-level BPE trained on the toy-world corpus with the ``tokenizers`` library."""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from mechscope.zoo.corpus import BOS, EOS, PAD, SPECIAL_TOKENS, tokenizer_training_text

VOCAB_SIZE = 2048
#: Markers that must survive decoding (``skip_special_tokens`` would drop true special tokens).
MARKERS = tuple(t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD))


def train_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the tokenizer (deterministic in ``seed``); every prompt gets a leading ``<bos>``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_training_text(seed), trainer=trainer)
    # lstrip: a marker absorbs the space before it, so "Hi <assistant>" does not leave a lone space token.
    tokenizer.add_tokens([AddedToken(marker, normalized=False, lstrip=True) for marker in MARKERS])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_input_names=["input_ids", "attention_mask"],
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save so that ``AutoTokenizer.from_pretrained(folder)`` loads it."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
