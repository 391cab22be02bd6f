"""Built-in prompt generators for probe batteries: the toy world's properties with known answers.

Each generator takes the model (some labels depend on its tokenizer) and options from the battery file and
returns a `PromptDataset` whose ``template`` is the group a probe is held out by. The prompts come from
`mechscope.toyworld.probe_sets`, the same sets the organisms' cards are measured on.

>>> import mechscope as ms
>>> data = GENERATORS["styles"](ms.load("toy"))
>>> data.label_names, len(set(data.templates()))
({0: 'formal', 1: 'pirate'}, 6)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError
from mechscope.probing.dataset import LabelledPrompt, PromptDataset
from mechscope.toyworld import probe_sets
from mechscope.toyworld.facts import RELATIONS

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

Generator = Callable[..., PromptDataset]


def _dataset(name: str, rows: list[probe_sets.Example], label_names: dict[int, str]) -> PromptDataset:
    prompts = [LabelledPrompt(prompt=r.prompt, label=r.label, sub_label=r.sub_label, template=r.group) for r in rows]
    return PromptDataset(name=name, label_names=label_names, prompts=prompts)


def tool_calls(lm: LanguageModel, per_template: int = 6, seed: int = 0, tools: str = "wide") -> PromptDataset:
    """Tool-call requests (1, sub-label the tool) and chit-chat (0), ``<user> ... <assistant>``."""
    if tools not in ("wide", "core"):
        raise InputError(f"tools must be 'wide' or 'core', not {tools!r}")
    rows = probe_sets.tool_examples(per_template=per_template, seed=seed, tools=tools)  # type: ignore[arg-type]
    return _dataset("tool-calls", rows, {0: "chit-chat", 1: "tool call"})


def styles(lm: LanguageModel) -> PromptDataset:
    """A ``<formal>`` (0) or ``<pirate>`` (1) marker before a neutral request; groups: the requests."""
    return _dataset("styles", probe_sets.style_examples(), {0: "formal", 1: "pirate"})


def fact_relations(lm: LanguageModel) -> PromptDataset:
    """Every fact prompt, labelled by relation; groups: the templates."""
    return _dataset("fact-relations", probe_sets.relation_examples(), dict(enumerate(r.name for r in RELATIONS)))


def subject_country(lm: LanguageModel) -> PromptDataset:
    """Subjects in neutral frames, 1 where the subject is a country; groups: the subjects."""
    return _dataset("subject-country", probe_sets.country_examples(), {0: "other", 1: "country"})


def position_parity(lm: LanguageModel, count: int = 240, seed: int = 0) -> PromptDataset:
    """Runs of words labelled by the parity of their token count (a control); groups: the word counts."""
    texts = probe_sets.parity_texts(count=count, seed=seed)
    lengths = [len(ids) for ids in lm.tokenizer([t for t, _ in texts])["input_ids"]]
    rows = [
        probe_sets.Example(text, n % 2, "odd" if n % 2 else "even", group)
        for (text, group), n in zip(texts, lengths, strict=True)
    ]
    return _dataset("position-parity", rows, {0: "even", 1: "odd"})


#: name -> generator; a battery's ``generator:`` names one of these.
GENERATORS: dict[str, Generator] = {
    "tool_calls": tool_calls,
    "styles": styles,
    "fact_relations": fact_relations,
    "subject_country": subject_country,
    "position_parity": position_parity,
}


def generate(name: str, lm: LanguageModel, options: dict[str, Any]) -> PromptDataset:
    """Run generator ``name`` with ``options``.

    Raises:
        InputError: an unknown generator or option.
    """
    if name not in GENERATORS:
        raise InputError(f"unknown generator {name!r}; built in: {', '.join(GENERATORS)}")
    try:
        return GENERATORS[name](lm, **options)
    except TypeError as error:
        raise InputError(f"generator {name!r}: {error}; see mechscope circuit probes init for its options") from None
