"""A concept, and concept lists as JSONL files checked line by line. No torch.

A `Concept` has a stable id (a WordNet synset id such as ``dog.n.01``, or ``toy:animal:dog`` for the
organisms' world), the term that stands for it in text, its lemmas and gloss, a category (WordNet's
lexicographer file, e.g. ``noun.animal``), its hypernym path from the root, and a kind (``concrete`` or
``abstract``, from the category).

A concept list is JSONL, one concept per line. `check_concepts` rejects duplicate ids and empty terms
and names every offending line, so a bad list is fixed in one go.

Examples:
    >>> dog = Concept(id="dog.n.01", term="dog", category="noun.animal", kind="concrete")
    >>> Concept.from_json(dog.to_json()) == dog
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write_text

#: WordNet's noun lexicographer files whose synsets are physical things; the other noun files are abstract.
CONCRETE_CATEGORIES = frozenset(
    f"noun.{name}"
    for name in ("animal", "artifact", "body", "food", "object", "person", "plant", "substance", "location")
)


def kind_of(category: str) -> str:
    """``concrete`` for WordNet noun categories of physical things, else ``abstract`` (``""`` if unknown).

    Examples:
        >>> kind_of("noun.animal"), kind_of("noun.feeling"), kind_of("toy:country"), kind_of("misc")
        ('concrete', 'abstract', 'concrete', '')
    """
    if not category:
        return ""
    if category in CONCRETE_CATEGORIES or category.startswith("toy:"):
        return "concrete"
    return "abstract" if category.startswith(("noun.", "verb.", "adj.", "adv.")) else ""


@dataclass(frozen=True)
class Concept:
    """One concept of an encyclopedia.

    Attributes:
        id: stable, unique id (``dog.n.01``).
        term: the text that stands for the concept (``dog``); what stage 0 feeds the model.
        lemmas: every lemma of the concept, the term first.
        gloss: a short definition.
        category: a coarse class (WordNet lexicographer file, ``noun.animal``), for per-category scores.
        hypernyms: ids from the root to the direct parent (WordNet's first hypernym path).
        pos: part of speech (``n``, ``v``, ``a``, ``r``).
        kind: ``concrete`` or ``abstract`` (or ``""``), for the convergence study.

    Examples:
        >>> dog = Concept.from_dict({"id": "dog.n.01", "term": "dog", "category": "noun.animal",
        ...                          "hypernyms": ["animal.n.01", "canine.n.02"]})
        >>> dog.parent, dog.kind  # the direct hypernym; the kind follows from the category
        ('canine.n.02', 'concrete')
        >>> dog.to_json()  # doctest: +ELLIPSIS
        '{"id": "dog.n.01", "term": "dog", "lemmas": [], "gloss": "", "category": "noun.animal", ...}'
        >>> Concept.from_json('{"term": "cat"}')  # a bare term is its own id
        Concept(id='cat', term='cat', lemmas=(), gloss='', category='', hypernyms=(), pos='n', kind='')
    """

    id: str
    term: str
    lemmas: tuple[str, ...] = ()
    gloss: str = ""
    category: str = ""
    hypernyms: tuple[str, ...] = ()
    pos: str = "n"
    kind: str = ""

    @property
    def parent(self) -> str | None:
        """The direct hypernym's id (None for a root or a concept without hypernyms)."""
        return self.hypernyms[-1] if self.hypernyms else None

    def to_json(self) -> str:
        """One JSONL line (no newline), made once per concept."""
        return self._json_line

    @cached_property
    def _json_line(self) -> str:
        # fields by hand, not dataclasses.asdict: asdict deep-copies every field, which made writing the
        # concept table of a 20K-concept bootstrap take seconds (the JSON is the same)
        return json.dumps({name: getattr(self, name) for name in FIELDS}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Concept:
        """Parse one JSONL line (a bare ``{"term": ...}`` gets its term as id).

        Raises:
            ValueError: the line is not a JSON object with a string ``term`` (callers add the line number).
        """
        data = json.loads(line)
        if not isinstance(data, dict) or not isinstance(data.get("term"), str):
            raise ValueError('each line must be a JSON object with a "term" string')
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Concept:
        """A concept from a mapping; unknown keys are an error (a typo must not pass silently)."""
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}; a concept has {sorted(known)}")
        term = str(data["term"])
        category = str(data.get("category", ""))
        return cls(
            id=str(data.get("id") or term),
            term=term,
            lemmas=tuple(data.get("lemmas") or ()),
            gloss=str(data.get("gloss", "")),
            category=category,
            hypernyms=tuple(data.get("hypernyms") or ()),
            pos=str(data.get("pos", "n")),
            kind=str(data.get("kind") or kind_of(category)),
        )


@dataclass
class ConceptList:
    """Concepts in a fixed order, with lookups by id."""

    concepts: list[Concept]
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_concepts(self.concepts)
        self._index = {concept.id: i for i, concept in enumerate(self.concepts)}

    def __len__(self) -> int:
        return len(self.concepts)

    def __getitem__(self, i: int) -> Concept:
        return self.concepts[i]

    def __iter__(self) -> Any:
        return iter(self.concepts)

    def index(self, concept_id: str) -> int:
        """The position of ``concept_id``.

        Raises:
            InputError: no such concept (the message names a few that exist).
        """
        if concept_id not in self._index:
            examples = ", ".join(c.id for c in self.concepts[:3])
            raise InputError(f"no concept '{concept_id}' in this list of {len(self)} (e.g. {examples})")
        return self._index[concept_id]

    def ids(self) -> list[str]:
        """Every id, in order."""
        return [concept.id for concept in self.concepts]

    def siblings(self) -> list[list[int]]:
        """For each concept, the indices of the others with the same parent (or, without one, category)."""
        groups: dict[str, list[int]] = {}
        keys = []
        for i, concept in enumerate(self.concepts):
            key = concept.parent or f"category:{concept.category}"
            keys.append(key)
            groups.setdefault(key, []).append(i)
        return [[j for j in groups[key] if j != i] for i, key in enumerate(keys)]


def check_concepts(concepts: Sequence[Concept], lines: Sequence[int] | None = None) -> None:
    """Reject empty terms and duplicate ids, naming every offending line at once.

    Examples:
        Every bad line is named at once:

        >>> concepts = [Concept(id="dog", term="dog"), Concept(id="cat", term=" "), Concept(id="dog", term="hound")]
        >>> check_concepts(concepts)
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: bad concept list: line 2: empty term;
        line 3: duplicate id 'dog' (first on line 1); fix or remove those lines
        >>> check_concepts(concepts[:1], lines=[7])  # a good list passes silently

    Args:
        lines: the 1-based line number of each concept in its file (default: its position + 1).

    Raises:
        InputError: no concepts, or some are bad (the message lists up to ten offending lines).
    """
    if not concepts:
        raise InputError("the concept list is empty; give at least two concepts")
    numbers = list(lines) if lines is not None else list(range(1, len(concepts) + 1))
    problems = []
    first: dict[str, int] = {}
    for number, concept in zip(numbers, concepts, strict=True):
        if not concept.term.strip():
            problems.append(f"line {number}: empty term")
        elif not concept.id.strip():
            problems.append(f"line {number}: empty id")
        elif concept.id in first:
            problems.append(f"line {number}: duplicate id '{concept.id}' (first on line {first[concept.id]})")
        else:
            first[concept.id] = number
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise InputError(f"bad concept list: {'; '.join(problems[:10])}{more}; fix or remove those lines")


def read_concepts(path: str | os.PathLike[str]) -> ConceptList:
    """Read a concept list: JSONL (``.jsonl``/``.json``) or plain text, one term per line.

    Blank lines of a text file are reported as empty terms (they would otherwise shift every later line).

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "terms.txt"
        >>> _ = path.write_text("dog\\ncat\\nbank\\n")
        >>> concepts = read_concepts(path)  # one term per line: each is its own id
        >>> len(concepts), concepts.ids(), concepts.index("bank")
        (3, ['dog', 'cat', 'bank'], 2)
        >>> _ = path.write_text("dog\\n\\ncat\\n")
        >>> read_concepts(path)
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: bad concept list: line 2: empty term; fix or remove those lines

    Raises:
        InputError: the file is missing, a line is not valid JSON, or the list has duplicates or empty terms.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError(f"no concept list at '{source}'; create one with `mechscope concepts list`")
    text = source.read_text(encoding="utf-8")
    rows = text.splitlines()
    while rows and not rows[-1].strip():
        rows.pop()  # a trailing newline or two is not a concept
    concepts: list[Concept] = []
    if source.suffix in (".jsonl", ".json"):
        bad = []
        for number, row in enumerate(rows, start=1):
            try:
                concepts.append(Concept.from_json(row) if row.strip() else Concept(id="", term=""))
            except (ValueError, TypeError) as error:
                bad.append(f"line {number}: {error}")
        if bad:
            raise InputError(f"bad concept list '{source}': {'; '.join(bad[:10])}")
    else:
        concepts = [Concept(id=row.strip(), term=row.strip(), lemmas=(row.strip(),)) for row in rows]
    check_concepts(concepts)
    return ConceptList(concepts)


def write_concepts(path: str | os.PathLike[str], concepts: Iterable[Concept]) -> Path:
    """Write ``concepts`` as JSONL, atomically.

    Examples:
        >>> import pathlib, tempfile
        >>> concepts = [Concept(id="dog.n.01", term="dog", category="noun.animal", kind="concrete")]
        >>> path = write_concepts(pathlib.Path(tempfile.mkdtemp()) / "concepts.jsonl", concepts)
        >>> path.read_text(encoding="utf-8").count("\\n"), list(read_concepts(path)) == concepts  # a round trip
        (1, True)
    """
    return atomic_write_text(path, "".join(concept.to_json() + "\n" for concept in concepts))


def from_terms(terms: Sequence[str]) -> ConceptList:
    """Concepts named by plain terms (id = term).

    Examples:
        >>> concepts = from_terms(["dog", "cat"])
        >>> concepts.ids(), concepts[1].lemmas, concepts.index("cat")
        (['dog', 'cat'], ('cat',), 1)
    """
    return ConceptList([Concept(id=term, term=term, lemmas=(term,)) for term in terms])


#: the fields of a concept, in declaration order (its JSON keys)
FIELDS = tuple(f.name for f in fields(Concept))
