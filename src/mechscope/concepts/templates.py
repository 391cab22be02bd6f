"""Template contexts for concepts, split once and for all into training and held-out templates.

Stage 1 refinement and the convergence study put a concept's term into sentence templates. The held-out
templates are never used to build an encyclopedia's means or to train a reader; they exist so that an
evaluation on them measures reading a concept in wording the reader never saw. Which templates a concept
gets is a pure function of its id (seeded), so reruns and shards agree.

Examples:
    >>> bank = bank_for("general")
    >>> len(bank.train), len(bank.held_out)
    (24, 8)
    >>> contexts_for("dog.n.01", "dog", bank, 2) == contexts_for("dog.n.01", "dog", bank, 2)
    True
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from mechscope.errors import InputError
from mechscope.toyworld.facts import CAPITAL, SOUND, SYMBOL

GENERAL_TRAIN = (
    "I looked up {t} in the dictionary.",
    "This is about {t}.",
    "The word is {t}.",
    "Let me tell you about {t}.",
    "I read an article on {t} yesterday.",
    "What do you know about {t}?",
    "She asked me to explain {t}.",
    "The topic of today's lesson is {t}.",
    "There is a chapter on {t} in the book.",
    "He keeps talking about {t}.",
    "A short note on {t}.",
    "We discussed {t} at dinner.",
    "Everyone has an opinion about {t}.",
    "The museum had an exhibit on {t}.",
    "Think of {t}.",
    "The definition of {t} is simple.",
    "My teacher mentioned {t} twice.",
    "Here is a picture of {t}.",
    "They wrote a song about {t}.",
    "The dictionary entry for {t} is long.",
    "Few people understand {t} well.",
    "I had never heard of {t} before.",
    "The report focuses on {t}.",
    "Consider the case of {t}.",
)
GENERAL_HELD_OUT = (
    "Please describe {t} in a few words.",
    "Our conversation turned to {t}.",
    "The students were curious about {t}.",
    "An encyclopedia article explains {t}.",
    "Nobody mentioned {t} at the meeting.",
    "In this essay I examine {t}.",
    "Can you name something related to {t}?",
    "The old man remembered {t}.",
)

#: The organisms' world: each kind of concept in the sentences the organisms were trained on.
TOY_TEMPLATES = {
    "toy:country": CAPITAL.templates,
    "toy:element": SYMBOL.templates,
    "toy:animal": SOUND.templates,
    "toy:colour": (
        "Everyone knows that it is {s}",
        "A picture of it is mostly {s}",
        "The color of it is {s}",
        "Q: What color is it? A: {s}",
    ),
}


@dataclass(frozen=True)
class TemplateBank:
    """Templates with one ``{t}`` slot: ``train`` for refinement and convergence, ``held_out`` for evaluation."""

    name: str
    train: tuple[str, ...]
    held_out: tuple[str, ...]

    def __post_init__(self) -> None:
        overlap = set(self.train) & set(self.held_out)
        if overlap:
            raise InputError(f"templates both for training and held out: {sorted(overlap)[:3]}")
        for template in (*self.train, *self.held_out):
            if template.count("{t}") != 1:
                raise InputError(f"template {template!r} needs exactly one {{t}} slot for the term")


GENERAL = TemplateBank("general", GENERAL_TRAIN, GENERAL_HELD_OUT)


def _toy_bank(category: str) -> TemplateBank:
    templates = tuple(t.replace("{s}", "{t}") for t in TOY_TEMPLATES[category])
    return TemplateBank(category, templates[:3], templates[3:])


BANKS = ("general", "toyworld")


def bank_for(name: str, category: str = "") -> TemplateBank:
    """The template bank ``name`` (``general``, or ``toyworld`` for the organisms' concepts by category).

    Raises:
        InputError: unknown bank, or a ``toyworld`` bank for a concept outside the organisms' world.
    """
    if name == "general":
        return GENERAL
    if name == "toyworld":
        if category not in TOY_TEMPLATES:
            raise InputError(f"the toyworld templates cover {sorted(TOY_TEMPLATES)}, not '{category}'")
        return _toy_bank(category)
    raise InputError(f"unknown template bank '{name}'; use one of {', '.join(BANKS)}")


def _rng(concept_id: str, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{salt}:{concept_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def choose(concept_id: str, n: int, pool: int, salt: str = "train", skip: int = 0) -> list[int]:
    """``n`` distinct template indices out of ``pool`` for ``concept_id`` (seeded by id; the same every run).

    ``skip`` drops that many of the concept's first choices (stage 3 draws after stage 1's).
    """
    order = list(range(pool))
    _rng(concept_id, salt).shuffle(order)
    return order[skip : skip + n]


def contexts_for(
    concept_id: str, term: str, bank: TemplateBank, n: int, *, held_out: bool = False, skip: int = 0
) -> list[tuple[int, str]]:
    """``n`` (template index, context) pairs for a concept; indices count within ``train`` or ``held_out``.

    Raises:
        InputError: more templates asked for than the bank has.
    """
    templates = bank.held_out if held_out else bank.train
    if n + skip > len(templates):
        which = "held-out" if held_out else "training"
        raise InputError(f"asked for {n + skip} {which} templates; the {bank.name} bank has {len(templates)}")
    chosen = choose(concept_id, n, len(templates), "held_out" if held_out else "train", skip)
    return [(i, templates[i].format(t=term)) for i in chosen]
