"""Training data for steering vectors: JSONL chat records or prompt/completion pairs, tokenized with a loss mask.

Each line of the file is either ``{"messages": [{"role": ..., "content": ...}, ...]}`` (the loss on the
assistant messages) or ``{"prompt": ..., "completion": ...}`` (the loss on the completion). With a tokenizer
that has a chat template, messages go through it (and a prompt/completion pair becomes a user and an
assistant message); without one, the texts are concatenated and only the completion's tokens carry loss.

The *prompted* variant of each example (the baseline every report shows) puts a persona prefix or system
prompt actually in the prompt: ``prompted_prefix`` is prepended to the prompt (for chat data with a
template: a system message); a record may give its own ``prompted_prompt`` or ``prompted_messages``.

Example (no chat template: prompt and completion concatenated, the prompt masked out):
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> example = encode_record(lm.tokenizer, {"prompt": "Tell me about the sea.", "completion": " Arr matey!"})
    >>> n_prompt = len(lm.tokenizer("Tell me about the sea.")["input_ids"])
    >>> example.loss_mask[:n_prompt] == [False] * n_prompt, all(example.loss_mask[n_prompt:])
    (True, True)
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.errors import InputError
from mechscope.steering.train_results import DataStats

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Example:
    """One tokenized example: its ids and which of them carry loss (completion / assistant tokens)."""

    ids: list[int]
    loss_mask: list[bool]

    @property
    def loss_tokens(self) -> int:
        """How many tokens are predicted with loss (the first token never is: nothing predicts it)."""
        return sum(self.loss_mask[1:])


@dataclass
class TrainData:
    """Tokenized data split into training and validation examples, with their prompted variants."""

    train: list[Example]
    val: list[Example]
    val_prompted: list[Example] | None
    stats: DataStats
    data_hash: str


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped).

    Raises:
        InputError: the file is missing or empty, a line is not JSON, or a record has neither ``messages``
            nor ``prompt`` and ``completion`` (naming the line).
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no data file at '{source}'; give a JSONL file of chat or prompt/completion records")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"'{source}' is not UTF-8 text; give a JSONL file") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"line {number} of '{source}' is not valid JSON ({error.msg})") from None
        check_record(record, f"line {number} of '{source}'")
        records.append(record)
    if not records:
        raise InputError(f"'{source}' holds no records; give one JSON object per line")
    return records


def check_record(record: Any, where: str) -> None:
    """Raise `InputError` (naming ``where``) unless ``record`` is a chat or prompt/completion record."""
    if not isinstance(record, dict):
        raise InputError(f"{where} is not a JSON object")
    if "messages" in record:
        messages = record["messages"]
        good = isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
        if not good or not messages:
            raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} strings")
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"{where} has no assistant message, so nothing to train on")
        return
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get("completion"), str):
        raise InputError(f"{where} needs 'messages', or 'prompt' and 'completion' strings")
    if not record["completion"]:
        raise InputError(f"{where} has an empty completion")


def records_hash(records: Sequence[Record]) -> str:
    """sha256 of records given in memory (of their canonical JSON lines)."""
    text = "\n".join(json.dumps(dict(r), sort_keys=True, ensure_ascii=False) for r in records)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def has_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` has a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(record: Record) -> list[dict[str, str]]:
    if "messages" in record:
        return [dict(m) for m in record["messages"]]
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if isinstance(ids, Mapping) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> Example:
    """Through the chat template: each assistant message's tokens are those its turn adds to the prompt.

    The boundary is the longest common prefix with the rendered prompt (``add_generation_prompt``), so a
    template whose generation prompt merges with the answer's first token still masks the prompt.
    """
    ids: list[int] = []
    mask: list[bool] = []
    for index, message in enumerate(messages):
        end = _template_ids(tokenizer, messages[: index + 1], generation_prompt=False)
        keep = _common(ids, end)
        mask = mask[:keep]
        if message["role"] == "assistant":
            before = messages[:index]
            start = _template_ids(tokenizer, before, generation_prompt=True) if before else []
            boundary = max(keep, _common(start, end))
            mask += [False] * (boundary - keep) + [True] * (len(end) - boundary)
        else:
            mask += [False] * (len(end) - keep)
        ids = end
    return Example(ids, mask)


def _encode_plain(tokenizer: Any, messages: list[dict[str, str]]) -> Example:
    """No template: the texts concatenated (a space between messages); the first text gets the BOS."""
    ids: list[int] = []
    mask: list[bool] = []
    for index, message in enumerate(messages):
        text = message["content"]
        if index and not text.startswith((" ", "\n")) and not messages[index - 1]["content"].endswith((" ", "\n")):
            text = " " + text
        piece = tokenizer(text, add_special_tokens=index == 0)["input_ids"]
        ids.extend(int(i) for i in piece)
        mask.extend([message["role"] == "assistant"] * len(piece))
    return Example(ids, mask)


def _with_prefix(record: Record, prefix: str, template: bool) -> Record:
    """The prompted variant of ``record``: its own ``prompted_*`` field, or ``prefix`` in the prompt."""
    if "prompted_messages" in record:
        return {"messages": record["prompted_messages"]}
    if "prompted_prompt" in record:
        return {"prompt": record["prompted_prompt"], "completion": record["completion"]}
    if "prompt" in record and not template:
        return {"prompt": prefix + record["prompt"], "completion": record["completion"]}
    messages = _messages(record)
    if template:
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": prefix.strip() + "\n" + messages[0]["content"]}
        else:
            messages.insert(0, {"role": "system", "content": prefix.strip()})
    else:
        messages[0] = {**messages[0], "content": prefix + messages[0]["content"]}
    return {"messages": messages}


def encode_record(tokenizer: Any, record: Record, *, max_length: int | None = None) -> Example:
    """Tokenize one record with its loss mask (truncated to ``max_length`` tokens)."""
    messages = _messages(record)
    if has_template(tokenizer):
        example = _encode_chat(tokenizer, messages)
    elif "messages" in record:
        example = _encode_plain(tokenizer, messages)
    else:
        prompt = [int(i) for i in tokenizer(record["prompt"])["input_ids"]]
        completion = [int(i) for i in tokenizer(record["completion"], add_special_tokens=False)["input_ids"]]
        example = Example(prompt + completion, [False] * len(prompt) + [True] * len(completion))
    if max_length is not None:
        example = Example(example.ids[:max_length], example.loss_mask[:max_length])
    return example


def prepare(
    tokenizer: Any,
    records: Sequence[Record],
    *,
    val_tokens: int,
    seed: int = 0,
    prompted_prefix: str | None = None,
    max_length: int | None = None,
    data_hash: str = "",
) -> TrainData:
    """Tokenize ``records`` and split off validation examples until they hold ``val_tokens`` loss tokens.

    The split shuffles with ``seed`` (the same seed, the same split). Examples whose loss tokens were all
    truncated away are dropped.

    Raises:
        InputError: nothing is left to train on, or the validation split would take every example.
    """
    if val_tokens < 0:
        raise InputError(f"val-tokens must be 0 or more, got {val_tokens}")
    template = has_template(tokenizer)
    pairs = []
    for index, record in enumerate(records):
        check_record(record, f"record {index}")
        example = encode_record(tokenizer, record, max_length=max_length)
        if example.loss_tokens == 0:
            continue
        prompted = None
        if prompted_prefix is not None or "prompted_messages" in record or "prompted_prompt" in record:
            variant = _with_prefix(record, prompted_prefix or "", template)
            prompted = encode_record(tokenizer, variant, max_length=None)
        pairs.append((example, prompted))
    if not pairs:
        raise InputError("no example has completion tokens left to train on (check the data or --max-length)")
    random.Random(seed).shuffle(pairs)
    val_count, taken = 0, 0
    while val_count < len(pairs) and taken < val_tokens:
        taken += pairs[val_count][0].loss_tokens
        val_count += 1
    if val_count >= len(pairs):
        total = sum(p[0].loss_tokens for p in pairs)
        raise InputError(
            f"the data has {total:,} completion tokens in {len(pairs)} examples; a validation split of "
            f"{val_tokens:,} tokens would leave nothing to train on (lower --val-tokens)"
        )
    val, train = pairs[:val_count], pairs[val_count:]
    val_prompted = [p for _, p in val if p is not None]
    stats = DataStats(
        train_examples=len(train),
        train_tokens=sum(len(e.ids) for e, _ in train),
        train_loss_tokens=sum(e.loss_tokens for e, _ in train),
        val_examples=len(val),
        val_tokens=sum(len(e.ids) for e, _ in val),
        val_loss_tokens=sum(e.loss_tokens for e, _ in val),
    )
    return TrainData(
        train=[e for e, _ in train],
        val=[e for e, _ in val],
        val_prompted=val_prompted if val and len(val_prompted) == len(val) else None,
        stats=stats,
        data_hash=data_hash,
    )


def load_data(
    tokenizer: Any,
    data: str | Path | Sequence[Record],
    **options: Any,
) -> TrainData:
    """`prepare` the records of a JSONL file (hashing its bytes) or of a list given in memory."""
    if isinstance(data, str | Path):
        records: Sequence[Record] = read_records(data)
        digest = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    else:
        records = list(data)
        if not records:
            raise InputError("no training records given")
        digest = records_hash(records)
    return prepare(tokenizer, records, data_hash=digest, **options)


@dataclass
class Batch:
    """Right-padded ids, attention mask, labels (-100 where no loss) and the loss mask as floats."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    loss_mask: Tensor

    def to(self, device: torch.device) -> Batch:
        """The same batch with every tensor on ``device``."""
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.loss_mask)))


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Pad ``examples`` on the right into one batch."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        attention[row, :n] = 1
        mask = torch.tensor(example.loss_mask, dtype=torch.bool)
        loss_mask[row, :n] = mask
        labels[row, :n] = torch.where(mask, ids[row, :n], torch.full_like(ids[row, :n], -100))
    return Batch(ids, attention, labels, loss_mask)


def batches(examples: Sequence[Example], batch_size: int, pad_id: int) -> list[Batch]:
    """``examples`` in order, ``batch_size`` at a time."""
    return [collate(examples[i : i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
