"""Where concept lists come from: WordNet, the organisms' own world, a plain list or a JSONL file.

Examples:
    >>> world = toyworld_concepts()
    >>> world[0].id, world[0].category, world[0].parent
    ('toy:country:France', 'toy:country', 'toy:country')
    >>> sorted({c.category for c in world})
    ['toy:animal', 'toy:colour', 'toy:country', 'toy:element']
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from mechscope.concepts.concept import Concept, ConceptList, read_concepts
from mechscope.errors import InputError
from mechscope.toyworld.facts import CAPITAL, COLOR, SOUND, SYMBOL

SOURCES = ("wordnet", "toyworld", "file")


def toyworld_concepts() -> ConceptList:
    """The countries, elements, animals and colours the organisms know (`mechscope.toyworld.facts`).

    Each concept's parent is its kind (``toy:country``), so its lens siblings are the other countries.

    Examples:
        >>> world = toyworld_concepts()
        >>> len(world), [c.term for c in world][:3]
        (161, ['France', 'Germany', 'Italy'])
        >>> cat = world[world.index("toy:animal:cat")]
        >>> cat.term, cat.hypernyms, cat.kind
        ('cat', ('toy:thing', 'toy:animal'), 'concrete')
    """
    groups = {
        "country": [subject for subject, _ in CAPITAL.facts],
        "element": [subject for subject, _ in SYMBOL.facts],
        "animal": [subject for subject, _ in SOUND.facts],
        "colour": list(dict.fromkeys(answer for _, answer in COLOR.facts)),
    }
    concepts = [
        Concept(
            id=f"toy:{kind}:{term}",
            term=term,
            lemmas=(term,),
            category=f"toy:{kind}",
            hypernyms=("toy:thing", f"toy:{kind}"),
            kind="concrete",
        )
        for kind, terms in groups.items()
        for term in terms
    ]
    return ConceptList(concepts)


def load_concepts(
    source: str,
    *,
    path: str | os.PathLike[str] | None = None,
    pos: str = "n",
    limit: int | None = None,
    single_word: bool = False,
    unique_terms: bool = False,
    sample: int | None = None,
    seed: int = 0,
) -> ConceptList:
    """A concept list from ``source``: ``wordnet``, ``toyworld`` or ``file`` (JSONL or one term per line).

    Args:
        limit: the first ``limit`` concepts (WordNet's file order groups synsets by category, so the first
            thousands of nouns are nearly all ``noun.Tops`` and ``noun.act``).
        sample: instead, a seeded random sample of this many, kept in the source's order (every category
            in proportion).

    Examples:
        >>> import pathlib, tempfile
        >>> load_concepts("toyworld", limit=2).ids()
        ['toy:country:France', 'toy:country:Germany']
        >>> load_concepts("toyworld", sample=3, seed=0).ids()  # spread over the list, kept in its order
        ['toy:country:Canada', 'toy:element:barium', 'toy:animal:calf']
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "terms.txt"
        >>> _ = path.write_text("dog\\ncat\\nsea lion\\n")
        >>> load_concepts("file", path=path, single_word=True).ids()
        ['dog', 'cat']

    Raises:
        InputError: unknown source, ``file`` without a path, or a bad file (see `read_concepts`).
    """
    if limit is not None and sample is not None:
        raise InputError("give --limit (the first N) or --sample (N at random), not both")
    if source == "wordnet":
        from mechscope.concepts.wordnet import wordnet_concepts

        found = list(wordnet_concepts(pos, limit=limit, single_word=single_word, unique_terms=unique_terms))
        return ConceptList(_sampled(found, sample, seed))
    if source == "toyworld":
        concepts = toyworld_concepts().concepts
    elif source == "file":
        if path is None:
            raise InputError("the file source needs a path: pass --file concepts.jsonl (or a .txt of terms)")
        concepts = read_concepts(Path(path)).concepts
    else:
        raise InputError(f"unknown concept source '{source}'; use one of {', '.join(SOURCES)}")
    if single_word:
        concepts = [c for c in concepts if " " not in c.term]
    return ConceptList(_sampled(concepts[:limit] if limit is not None else concepts, sample, seed))


def _sampled(concepts: list[Concept], sample: int | None, seed: int) -> list[Concept]:
    if sample is None or sample >= len(concepts):
        return concepts
    if sample < 2:
        raise InputError(f"--sample must be at least 2, got {sample}")
    keep = sorted(random.Random(seed).sample(range(len(concepts)), sample))
    return [concepts[i] for i in keep]
