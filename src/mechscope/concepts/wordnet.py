"""WordNet 3.0, offline, from Debian's ``wordnet-base`` files, read by nltk's WordNet corpus reader.

Three things stand between those files and nltk (3.10), and this module handles each:

* the package has no ``lexnames`` file (the reader needs it to name categories), so it is generated from
  the package's own ``lexnames(5WN)`` manual page (45 rows: number, name, syntactic category);
* nltk refuses to read paths outside its data roots ("Unauthorized path"), so the database files are
  copied once into a data folder of ours (``$MECHSCOPE_WORDNET`` or ``~/.cache/mechscope/wordnet-3.0``),
  which is added to nltk's data path;
* the reader's start-up maps "wordnet" (nltk's downloadable copy) onto the loaded version for its
  multilingual features, which looks that copy up and fails offline; the database read here *is* WordNet
  3.0, so that mapping is the identity and is skipped.

Nothing is downloaded. Debian's files are found under ``$WNSEARCHDIR`` or ``/usr/share/wordnet``.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from mechscope.concepts.concept import Concept, kind_of
from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write_text

DATABASE_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")) + tuple(
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")
)
MANUAL_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
INSTALL_HINT = "install Debian's wordnet-base (`apt-get install wordnet-base`, done by scripts/setup.sh)"


def source_folder() -> Path:
    """Where Debian's WordNet database lives (``$WNSEARCHDIR``, else ``/usr/share/wordnet``).

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WNSEARCHDIR": "/opt/wordnet/dict"}):
        ...     str(source_folder())
        '/opt/wordnet/dict'
        >>> with mock.patch.dict(os.environ):
        ...     _ = os.environ.pop("WNSEARCHDIR", None)
        ...     str(source_folder()), (source_folder() / "data.noun").is_file()  # Debian's wordnet-base
        ('/usr/share/wordnet', True)
    """
    return Path(os.environ.get("WNSEARCHDIR", "/usr/share/wordnet"))


def data_folder() -> Path:
    """Our copy of the database, where nltk may read it: ``$MECHSCOPE_WORDNET`` or the user cache.

    Examples:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"MECHSCOPE_WORDNET": "/data/wordnet"}):
        ...     str(data_folder())
        '/data/wordnet'
        >>> with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/tmp/cache"}):
        ...     _ = os.environ.pop("MECHSCOPE_WORDNET", None)
        ...     str(data_folder())
        '/tmp/cache/mechscope/wordnet-3.0'
    """
    configured = os.environ.get("MECHSCOPE_WORDNET")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mechscope" / "wordnet-3.0"


def lexnames_from_manual(page: Path = MANUAL_PAGE) -> str:
    """The ``lexnames`` file, rebuilt from the ``lexnames(5WN)`` manual page's table.

    Examples:
        >>> rows = lexnames_from_manual().splitlines()  # number, category, part of speech (1: noun)
        >>> len(rows), rows[3].split(), rows[5].split()
        (45, ['03', 'noun.Tops', '1'], ['05', 'noun.animal', '1'])

    Raises:
        InputError: the page is missing or its table does not have the 45 rows of WordNet 3.0.
    """
    if not page.is_file():
        raise InputError(f"WordNet's lexnames manual page {page} is missing; {INSTALL_HINT}")
    with gzip.open(page, "rt", encoding="utf-8") as handle:
        text = handle.read()
    rows = []
    for line in text.splitlines():
        match = re.match(r"^(\d\d)\t\s*([a-z]+)\.(\w+)\s*\t", line)
        if match:
            number, pos, name = match.groups()
            rows.append(f"{number}\t{pos}.{name}\t{POS_NUMBER[pos]}\n")
    if len(rows) != 45 or any(not row.startswith(f"{i:02d}\t") for i, row in enumerate(rows)):
        raise InputError(f"{page} does not hold WordNet 3.0's 45 lexicographer files; reinstall wordnet-base")
    return "".join(rows)


def prepare(folder: Path | None = None) -> Path:
    """Make the nltk-readable copy of WordNet 3.0 (once; later calls only check it); returns its folder.

    Examples:
        >>> import pathlib, tempfile
        >>> folder = prepare(pathlib.Path(tempfile.mkdtemp()) / "wordnet")  # copies the 12 database files
        >>> len(list(folder.iterdir())), (folder / "lexnames").is_file()
        (13, True)
        >>> prepare(folder) == folder  # already there: only checked
        True

    Raises:
        InputError: Debian's WordNet files are not installed.
    """
    target = folder or data_folder()
    if all((target / name).is_file() for name in (*DATABASE_FILES, "lexnames")):
        return target
    source = source_folder()
    missing = [name for name in DATABASE_FILES if not (source / name).is_file()]
    if missing:
        raise InputError(f"WordNet is not installed ({source / missing[0]} is missing); {INSTALL_HINT}")
    target.mkdir(parents=True, exist_ok=True)
    lexnames = lexnames_from_manual()
    for name in DATABASE_FILES:
        if not (target / name).is_file():
            partial = target / f".{name}.partial"
            shutil.copyfile(source / name, partial)
            partial.replace(target / name)  # a copy interrupted midway is never taken for a whole file
    atomic_write_text(target / "lexnames", lexnames)
    return target


@lru_cache(maxsize=2)
def reader(folder: Path | None = None) -> Any:
    """nltk's WordNet corpus reader over our copy of WordNet 3.0 (prepared on first use).

    Examples:
        >>> wn = reader()  # cached: later calls return the same reader
        >>> wn.get_version(), wn.synset("dog.n.01").lemma_names()[:2], wn.synset("dog.n.01").lexname()
        ('3.0', ['dog', 'domestic_dog'], 'noun.animal')
    """
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.data import FileSystemPathPointer

    root = prepare(folder)
    if str(root.parent) not in nltk.data.path:
        nltk.data.path.append(str(root.parent))

    class OfflineWordNet(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # this database is WordNet 3.0 itself: the 3.0 mapping is the identity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "multilingual functions are not available": we need none
        return OfflineWordNet(FileSystemPathPointer(str(root)), None)


def _primary_path(synset: Any) -> tuple[str, ...]:
    """The synset's hypernyms from the root down to its parent, taking the first (sorted) hypernym each step.

    Not ``hypernym_paths()[0]``: nltk's order of those paths changes with Python's hash seed, so the parent
    (and the lenses' sibling sets built on it) would change from one process to the next.
    """
    chain: list[str] = []
    node, seen = synset, {synset.name()}
    while True:
        parents = sorted(node.hypernyms() + node.instance_hypernyms(), key=lambda parent: parent.name())
        if not parents or parents[0].name() in seen:
            return tuple(reversed(chain))
        node = parents[0]
        seen.add(node.name())
        chain.append(node.name())


def synset_concept(synset: Any) -> Concept:
    """An nltk synset as a `Concept`: id, first lemma as term, gloss, lexicographer category, hypernym path.

    Examples:
        >>> dog = synset_concept(reader().synset("dog.n.01"))  # the first use starts nltk's reader (seconds)
        >>> dog.term, dog.lemmas, dog.category, dog.kind
        ('dog', ('dog', 'domestic dog', 'Canis familiaris'), 'noun.animal', 'concrete')
        >>> dog.hypernyms[:3], dog.parent  # from the root down
        (('entity.n.01', 'physical_entity.n.01', 'object.n.01'), 'canine.n.02')
    """
    lemmas = tuple(name.replace("_", " ") for name in synset.lemma_names())
    path = _primary_path(synset)
    category = synset.lexname()
    return Concept(
        id=synset.name(),
        term=lemmas[0],
        lemmas=lemmas,
        gloss=synset.definition(),
        category=category,
        hypernyms=path,
        pos=synset.pos(),
        kind=kind_of(category),
    )


def wordnet_concepts(
    pos: str = "n", *, limit: int | None = None, single_word: bool = False, unique_terms: bool = False
) -> Iterator[Concept]:
    """WordNet synsets as concepts, in WordNet's file order (stable across runs).

    Args:
        pos: ``n``, ``v``, ``a`` or ``r`` (also ``noun``, ``verb``, ``adj``, ``adv``).
        limit: stop after this many.
        single_word: skip synsets whose first lemma has a space (``domestic dog``).
        unique_terms: skip a synset whose term an earlier one already used (``bank`` twice reads alike at
            stage 0, where the model sees only the term).

    Examples:
        >>> [c.id for c in wordnet_concepts("noun", limit=3)]  # WordNet's file order: the root first
        ['entity.n.01', 'physical_entity.n.01', 'abstraction.n.06']
        >>> [c.term for c in wordnet_concepts("n", limit=4, single_word=True)]  # no "physical entity"
        ['entity', 'abstraction', 'thing', 'object']
        >>> [c.id for c in wordnet_concepts("verb", limit=2)]
        ['breathe.v.01', 'respire.v.02']

    Raises:
        InputError: unknown part of speech, or WordNet is not installed.
    """
    names = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
    tag = names.get(pos, pos)
    if tag not in ("n", "v", "a", "r"):
        raise InputError(f"unknown part of speech '{pos}'; use noun, verb, adj or adv")
    seen: set[str] = set()
    count = 0
    for synset in reader().all_synsets(tag):
        if limit is not None and count >= limit:
            return
        concept = synset_concept(synset)
        if single_word and " " in concept.term:
            continue
        if unique_terms:
            if concept.term.lower() in seen:
                continue
            seen.add(concept.term.lower())
        count += 1
        yield concept
