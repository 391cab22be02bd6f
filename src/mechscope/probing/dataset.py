"""Labelled prompt datasets: a built-in tool-calling set, user files, and a split by template.

A `PromptDataset` is a list of `LabelledPrompt` (prompt, integer label, sub-label, template id, metadata),
saved as JSON. `tool_prompt_dataset` builds the built-in set: requests answered with a tool call (label 1,
sub-label the tool's name, over eight tools) against chit-chat (label 0), each kind from several templates
with random slot values. Its wording is the toy world's (`mechscope.toyworld.assistant`), on which the ``toy``
organism was trained, so a probe on ``toy`` asks about wording the model knows; which templates the probe
itself sees is what `split_by_template` decides.

`split_by_template` puts every template wholly on one side, so that a probe is tested on wording it never
saw: a probe that only memorised a phrasing fails there.

>>> data = tool_prompt_dataset(per_tool=5, seed=0)
>>> len(data), sorted(set(data.labels())), len(data.tools())
(80, [0, 1], 8)
>>> data.prompts[0].prompt.startswith("<user> "), data.prompts[0].prompt.endswith(" <assistant>")
(True, True)
>>> train, test = split_by_template(data, test_share=0.3, seed=0)
>>> set(train.templates()) & set(test.templates())
set()
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write_text
from mechscope.toyworld.assistant import ASSISTANT, CHAT_TEMPLATES, TOOL_TEMPLATES, USER, slots

TOOL, NO_TOOL = 1, 0
CHAT = "chat"


class LabelledPrompt(BaseModel):
    """One prompt with its label.

    Attributes:
        prompt: the text given to the model.
        label: the class (an integer; the built-in set: 1 = answered with a tool call, 0 = chit-chat).
        sub_label: a finer class (the built-in set: the tool's name, or ``"chat"``).
        template: the id of the template the prompt was made from; prompts of one template are kept on one
            side of `split_by_template`.
        metadata: anything else (the built-in set: the expected ``call`` and the ``reply``).

    Examples:
        >>> from mechscope.probing.dataset import LabelledPrompt, PromptDataset
        >>> ask = LabelledPrompt(prompt="<user> Is it raining in Oslo? <assistant>", label=1, sub_label="weather")
        >>> ask.template, ask.metadata
        ('', {})
        >>> data = PromptDataset(prompts=[ask, LabelledPrompt(prompt="<user> Hi! <assistant>", label=0)])
        >>> data.labels(), data.tools()
        ([1, 0], ['weather'])
        >>> LabelledPrompt(prompt="", label=0)  # a prompt needs text
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for LabelledPrompt
        prompt
          String should have at least 1 character ...
    """

    prompt: str = Field(min_length=1)
    label: int
    sub_label: str = ""
    template: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class PromptDataset(BaseModel):
    """A labelled prompt set, saved and loaded as JSON.

    Attributes:
        name: what the set is (``"tool-calls"`` for the built-in one).
        label_names: what each label means, e.g. ``{0: "chit-chat", 1: "tool call"}``.
        seed: the seed the set was generated with (None for a loaded user file).
        prompts: the examples.
    """

    name: str = "prompts"
    label_names: dict[int, str] = Field(default_factory=dict)
    seed: int | None = None
    prompts: list[LabelledPrompt]

    def __len__(self) -> int:
        return len(self.prompts)

    def texts(self) -> list[str]:
        """The prompts' texts, in order."""
        return [p.prompt for p in self.prompts]

    def labels(self) -> list[int]:
        """The labels, in order."""
        return [p.label for p in self.prompts]

    def sub_labels(self) -> list[str]:
        """The sub-labels, in order."""
        return [p.sub_label for p in self.prompts]

    def templates(self) -> list[str]:
        """The template ids, in order (the groups of a grouped cross-validation)."""
        return [p.template for p in self.prompts]

    def tools(self) -> list[str]:
        """The distinct sub-labels of label-1 prompts, sorted (the tools of the built-in set)."""
        return sorted({p.sub_label for p in self.prompts if p.label == TOOL})

    def subset(self, indices: list[int], name: str | None = None) -> PromptDataset:
        """The prompts at ``indices``, in that order."""
        return self.model_copy(
            update={"name": name or self.name, "prompts": [self.prompts[i] for i in indices]}, deep=True
        )

    def digest(self) -> str:
        """SHA-256 of the set's canonical JSON: names exactly this content (for provenance of activations)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the set as JSON (atomically); returns the path."""
        return atomic_write_text(path, self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PromptDataset:
        """Read a set from ``.json`` (this format, or a list of records), ``.jsonl`` or ``.csv``."""
        return load_prompts(path)


#: The seed's name for the built-in set.
ToolPromptDataset = PromptDataset


def _fill(rng: random.Random, message: str, answer: str, seen: set[str]) -> tuple[str, dict[str, str]]:
    """A prompt from ``message`` with fresh slots, avoiding repeats where a few tries allow."""
    for _ in range(20):
        values = slots(rng)
        text = f"{USER} {message.format(**values)} {ASSISTANT}"
        if text not in seen:
            break
    seen.add(text)
    return text, {"answer": answer.format(**values)}


def tool_prompt_dataset(per_tool: int = 25, seed: int = 0, chat: int | None = None) -> PromptDataset:
    """The built-in set: ``per_tool`` requests for each of eight tools (label 1) and chit-chat (label 0).

    Each tool has four request templates and the chit-chat eighteen; prompts cycle through their kind's
    templates, with random slot values (cities, amounts, names, days), and end with
    ``<assistant>`` (where the model decides whether to call a tool). ``metadata["answer"]`` is the expected
    call (``weather(city=Paris)``) or reply.

    Args:
        per_tool: prompts per tool.
        seed: the seed of the slot values and the order.
        chat: how many chit-chat prompts (default: as many as tool prompts, ``8 * per_tool``).

    Examples:
        >>> from mechscope.probing.dataset import tool_prompt_dataset
        >>> data = tool_prompt_dataset(per_tool=1, chat=3, seed=1)
        >>> len(data), sum(data.labels()), data.label_names
        (11, 8, {0: 'chit-chat', 1: 'tool call'})
        >>> first = data.prompts[0]
        >>> first.prompt, first.label, first.sub_label, first.template
        ('<user> What is your favourite colour? <assistant>', 0, 'chat', 'chat/2')
        >>> first.metadata["answer"]
        'I like blue, like the sky over the sea.'
    """
    if per_tool < 1:
        raise InputError(f"per_tool must be at least 1, not {per_tool}")
    chat = len(TOOL_TEMPLATES) * per_tool if chat is None else chat
    if chat < 1:
        raise InputError(f"chat must be at least 1, not {chat}")
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts: list[LabelledPrompt] = []
    for tool, templates in TOOL_TEMPLATES.items():
        for i in range(per_tool):
            t = i % len(templates)
            text, meta = _fill(rng, *templates[t], seen)
            prompts.append(
                LabelledPrompt(prompt=text, label=TOOL, sub_label=tool, template=f"{tool}/{t}", metadata=meta)
            )
    for i in range(chat):
        t = i % len(CHAT_TEMPLATES)
        text, meta = _fill(rng, *CHAT_TEMPLATES[t], seen)
        prompts.append(
            LabelledPrompt(prompt=text, label=NO_TOOL, sub_label=CHAT, template=f"{CHAT}/{t}", metadata=meta)
        )
    rng.shuffle(prompts)
    return PromptDataset(
        name="tool-calls", label_names={NO_TOOL: "chit-chat", TOOL: "tool call"}, seed=seed, prompts=prompts
    )


# --------------------------------------------------------------------------- loading user files


def _label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{where}: label {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(f"{where}: label {value!r} is not an integer")


def _record(row: Any, where: str, index: int) -> LabelledPrompt:
    """One example from a JSON object or CSV row; a missing template makes the prompt its own group."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object with prompt and label, got {type(row).__name__}")
    for column in ("prompt", "label"):
        if column not in row or row[column] in (None, ""):
            raise InputError(f"{where}: missing {column!r} (each example needs prompt and label)")
    if not isinstance(row["prompt"], str):
        raise InputError(f"{where}: prompt must be text, got {type(row['prompt']).__name__}")
    known = {"prompt", "label", "sub_label", "template", "metadata"}
    metadata = dict(row.get("metadata") or {})
    metadata.update({k: v for k, v in row.items() if k not in known and k is not None})
    return LabelledPrompt(
        prompt=row["prompt"],
        label=_label(row["label"], where),
        sub_label=str(row.get("sub_label") or ""),
        template=str(row.get("template") or f"row-{index}"),
        metadata=metadata,
    )


def _read(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def _load_json(path: Path) -> PromptDataset:
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, list):
        records = [_record(row, f"{path}: example {i}", i) for i, row in enumerate(data)]
        return PromptDataset(name=path.stem, prompts=records)
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise InputError(f"{path}: expected a prompt set (an object with 'prompts') or a list of examples")
    records = [_record(row, f"{path}: example {i}", i) for i, row in enumerate(data["prompts"])]
    try:
        return PromptDataset.model_validate({**data, "prompts": records})
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _load_jsonl(path: Path) -> PromptDataset:
    records: list[LabelledPrompt] = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        records.append(_record(row, f"{path}:{number}", len(records)))
    return PromptDataset(name=path.stem, prompts=records)


def _load_csv(path: Path) -> PromptDataset:
    reader = csv.DictReader(_read(path).splitlines())
    columns = reader.fieldnames or []
    missing = [c for c in ("prompt", "label") if c not in columns]
    if missing:
        raise InputError(f"{path}:1: missing column {missing[0]!r} (columns: prompt,label[,sub_label,template])")
    records: list[LabelledPrompt] = []
    for row in reader:
        records.append(_record(row, f"{path}:{reader.line_num}", len(records)))
    return PromptDataset(name=path.stem, prompts=records)


def load_prompts(path: str | os.PathLike[str]) -> PromptDataset:
    """A prompt set from a file: ``.json``, ``.jsonl`` or ``.csv`` (columns ``prompt,label[,sub_label,template]``).

    A JSON file is a saved `PromptDataset` or a list of examples; JSONL has one example object a line. A
    missing template makes each prompt its own template (a plain random split). Extra columns go to metadata.

    Examples:
        >>> import tempfile, pathlib
        >>> from mechscope.probing.dataset import load_prompts
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.csv"
        >>> _ = path.write_text("prompt,label,template,source\\nIs it raining?,1,weather,web\\nHello there,0,,chat\\n")
        >>> data = load_prompts(path)  # the row without a template becomes its own; `source` goes to metadata
        >>> data.name, [(p.prompt, p.label, p.template, p.metadata) for p in data.prompts]
        ('mine', [('Is it raining?', 1, 'weather', {'source': 'web'}),
                  ('Hello there', 0, 'row-1', {'source': 'chat'})])
        >>> _ = path.write_text("prompt,label\\nHello there,zero\\n")
        >>> load_prompts(path)
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: .../mine.csv:2: label 'zero' is not an integer

    Raises:
        InputError: the file is missing or malformed; the message names the line (or example) and the field.
    """
    source = Path(path)
    loaders = {".json": _load_json, ".jsonl": _load_jsonl, ".csv": _load_csv}
    loader = loaders.get(source.suffix.lower())
    if loader is None:
        raise InputError(f"{source}: unknown prompt file type {source.suffix!r}; use .json, .jsonl or .csv")
    dataset = loader(source)
    if not dataset.prompts:
        raise InputError(f"{source}: no examples")
    return dataset


# --------------------------------------------------------------------------- splitting


def split_by_template(
    dataset: PromptDataset, test_share: float = 0.3, seed: int = 0
) -> tuple[PromptDataset, PromptDataset]:
    """``(train, test)`` with every template wholly on one side.

    Templates are drawn per stratum (the most common ``(label, sub_label)`` of the template), about
    ``test_share`` of each stratum's templates (at least one where it has two or more), so both halves see
    every class the templates allow. Where no stratum has two templates, the templates are split as a whole.

    Examples:
        >>> from mechscope.probing.dataset import split_by_template, tool_prompt_dataset
        >>> data = tool_prompt_dataset(per_tool=8, seed=0)  # four templates per tool, eighteen of chit-chat
        >>> train, test = split_by_template(data, test_share=0.25, seed=0)
        >>> len(train), len(test), set(train.templates()) & set(test.templates())
        (97, 31, set())
        >>> sorted(set(test.templates()))  # one template of each tool, a quarter of the chit-chat
        ['calendar/2', 'chat/0', 'chat/17', 'chat/3', 'chat/8', 'convert/3',
         'email/1', 'reminder/0', 'search/0', 'time/0', 'translate/1', 'weather/3']
        >>> set(train.sub_labels()) == set(test.sub_labels())
        True

    Raises:
        InputError: ``test_share`` outside (0, 1), or fewer than two templates.
    """
    if not 0.0 < test_share < 1.0:
        raise InputError(f"test_share must be between 0 and 1, not {test_share}")
    templates = sorted(set(dataset.templates()))
    if len(templates) < 2:
        raise InputError(f"a split by template needs at least two templates; {dataset.name} has {len(templates)}")
    kinds: dict[str, Counter[tuple[int, str]]] = {t: Counter() for t in templates}
    for p in dataset.prompts:
        kinds[p.template][(p.label, p.sub_label)] += 1
    strata: dict[tuple[int, str], list[str]] = {}
    for template in templates:
        strata.setdefault(kinds[template].most_common(1)[0][0], []).append(template)
    rng = random.Random(seed)
    test: set[str] = set()
    for key in sorted(strata):
        group = strata[key]
        if len(group) >= 2:
            rng.shuffle(group)
            test.update(group[: min(len(group) - 1, max(1, round(test_share * len(group))))])
    if not test:
        rng.shuffle(templates)
        test.update(templates[: min(len(templates) - 1, max(1, round(test_share * len(templates))))])
    train_rows = [i for i, p in enumerate(dataset.prompts) if p.template not in test]
    test_rows = [i for i, p in enumerate(dataset.prompts) if p.template in test]
    return dataset.subset(train_rows, f"{dataset.name}-train"), dataset.subset(test_rows, f"{dataset.name}-test")
