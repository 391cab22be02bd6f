"""Labelled prompts about the toy world, for probes whose answers the organisms' cards state.

Each function returns `Example` rows (prompt, label, sub-label, group). The group is what a probe must never
see on both sides of a split: a template, so that the probe is tested on wording it never saw, or a subject,
so that it is tested on subjects it never saw. Both the organisms' cards (`mechscope.zoo.measure`, with their
own classifier) and the probe battery (`mechscope.probing`) read these sets, so the two measure one thing.

>>> rows = tool_examples(per_template=2, seed=0)
>>> len(rows), rows[0].label, rows[0].sub_label, rows[0].group
(128, 1, 'weather', 'weather/0')
>>> len(tool_examples(per_template=2, seed=0, tools="core")), len(relation_examples())
(32, 1012)
"""

from __future__ import annotations

import random
from typing import NamedTuple

from mechscope.toyworld import assistant
from mechscope.toyworld.assistant import ToolSet
from mechscope.toyworld.facts import CAPITAL, RELATIONS


class Example(NamedTuple):
    """One labelled prompt: ``label`` the class, ``sub_label`` a finer class, ``group`` its template/subject."""

    prompt: str
    label: int
    sub_label: str
    group: str


def tool_templates(
    tools: ToolSet = "wide",
) -> tuple[dict[str, tuple[assistant.Template, ...]], tuple[assistant.Template, ...]]:
    """``(tool templates, chit-chat templates)`` of a tool set.

    ``"wide"`` is every template of `mechscope.toyworld.assistant`; ``"core"`` the subset ``toy-moe`` was
    trained on: the first two templates of weather, time, convert and search, and the first ten chit-chat.
    """
    if tools == "wide":
        return assistant.TOOL_TEMPLATES, assistant.CHAT_TEMPLATES
    if tools == "core":
        core = ("weather", "time", "convert", "search")
        return {t: assistant.TOOL_TEMPLATES[t][:2] for t in core}, assistant.CHAT_TEMPLATES[:10]
    raise ValueError(f"unknown tool set {tools!r}; use 'core' or 'wide'")


def tool_examples(per_template: int = 6, seed: int = 0, tools: ToolSet = "wide") -> list[Example]:
    """Requests for a tool call (label 1, sub-label the tool) and chit-chat (label 0, ``"chat"``).

    Each prompt is ``<user> TEXT <assistant>``: the position where the model decides to call a tool. Tool
    templates give ``per_template`` prompts each; chit-chat templates give as many prompts in all as the
    tools, so the two labels are balanced.
    """
    tool_sets, chats = tool_templates(tools)
    rng = random.Random(seed)
    rows: list[Example] = []
    for tool, templates in tool_sets.items():
        for t, template in enumerate(templates):
            for _ in range(per_template):
                request, _call = assistant.fill(rng, template)
                rows.append(Example(f"{assistant.USER} {request} {assistant.ASSISTANT}", 1, tool, f"{tool}/{t}"))
    n_tool = len(rows)
    for i in range(n_tool):
        t = i % len(chats)
        message, _reply = assistant.fill(rng, chats[t])
        rows.append(Example(f"{assistant.USER} {message} {assistant.ASSISTANT}", 0, "chat", f"chat/{t}"))
    return rows


STYLE_MARKERS = ("<formal>", "<pirate>")
#: Neutral requests the style marker is put in front of (the style must travel from the marker to the end).
STYLE_TEMPLATES = (
    "Tell me about {t}.",
    "What do you think of {t}?",
    "Describe {t} for me.",
    "Say something about {t}.",
    "I want to hear about {t}.",
    "Write a note about {t}.",
)
STYLE_TOPICS = (
    *("the sea", "the weather", "the market", "the ship", "dinner", "the journey", "the treasure", "the town"),
    *("the river", "the castle", "the garden", "the winter", "the harbour", "the library"),
)


def style_examples() -> list[Example]:
    """A style marker (label 0 ``<formal>``, 1 ``<pirate>``) before a neutral request; groups: the request."""
    return [
        Example(f"{marker} {template.format(t=topic)}", label, marker.strip("<>"), f"style/{t}")
        for t, template in enumerate(STYLE_TEMPLATES)
        for topic in STYLE_TOPICS
        for label, marker in enumerate(STYLE_MARKERS)
    ]


def relation_examples() -> list[Example]:
    """Every fact prompt, labelled by its relation (``label`` its index in `RELATIONS`); groups: templates."""
    return [
        Example(template.format(s=subject), label, relation.name, f"{relation.name}/{t}")
        for label, relation in enumerate(RELATIONS)
        for t, template in enumerate(relation.templates)
        for subject, _answer in relation.facts
    ]


#: Frames that end on the subject, so the last position is the subject's own last token.
SUBJECT_FRAMES = ("Let us talk about {s}", "I am thinking of {s}", "Here is a word: {s}")


def country_examples() -> list[Example]:
    """Countries (label 1) and as many other subjects (0), in neutral frames; groups: the subjects.

    The other subjects are spread evenly over the other relations' sorted subjects. Grouping by subject
    tests the probe on countries (and other things) it never saw.
    """
    countries = sorted(subject for subject, _ in CAPITAL.facts)
    others = sorted(
        {s for relation in RELATIONS if relation is not CAPITAL for s, _ in relation.facts} - set(countries)
    )
    step = len(others) / len(countries)
    chosen = [others[int(i * step)] for i in range(len(countries))]
    return [
        Example(frame.format(s=subject), label, "country" if label else "other", subject)
        for label, subjects in ((1, countries), (0, chosen))
        for subject in subjects
        for frame in SUBJECT_FRAMES
    ]


PARITY_WORDS = ("the", "sea", "ship", "town", "blue", "and", "a", "day", "is", "we", "go", "home", "sun")


def parity_texts(count: int = 240, seed: int = 0) -> list[tuple[str, str]]:
    """``(text, group)``: runs of 3 to 24 common words; the label (token count parity) needs the tokenizer.

    The group is the word count, so a probe is tested on lengths it never saw.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = rng.randint(3, 24)
        texts.append((" ".join(rng.choice(PARITY_WORDS) for _ in range(n)).capitalize(), f"words/{n}"))
    return texts
