"""Registry of bundled model organisms: names that `load()` resolves to folders inside the package.

Organisms live in ``mechscope/zoo/<name>/`` (a ``save_pretrained`` folder plus ``CARD.md``). They are
found there automatically; other packages can add theirs with `register_organism`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mechscope.errors import ModelLoadError, ProvenanceError

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


@dataclass(frozen=True)
class Organism:
    """A bundled model: its name, folder and one-line summary (from its card)."""

    name: str
    path: Path
    summary: str


_REGISTERED: dict[str, Organism] = {}


def register_organism(name: str, path: str | Path, summary: str = "") -> Organism:
    """Make ``load(name)`` resolve to ``path``.

    Examples:
        >>> import mechscope as ms
        >>> organism = ms.register_organism("my-toy-copy", ms.load("toy").source, summary="toy, by another name")
        >>> ms.load("my-toy-copy").generate("The capital of France is", max_new_tokens=1)
        ' Paris'

    Raises:
        ValueError: ``name`` is registered already or names a bundled organism.
    """
    if name in _REGISTERED or name in _bundled():
        raise ValueError(f"organism '{name}' is registered already")
    organism = Organism(name=name, path=Path(path), summary=summary)
    _REGISTERED[name] = organism
    return organism


@functools.cache  # the bundled cards do not change while a process runs; provenance checks ask often
def _card_summary(folder: Path) -> str:
    card = folder / "CARD.md"
    if not card.is_file():
        return ""
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.lower().startswith("summary:"):
            return line.split(":", 1)[1].strip()
    return ""


def _bundled() -> dict[str, Organism]:
    if not ZOO_DIR.is_dir():
        return {}
    return {
        folder.name: Organism(folder.name, folder, _card_summary(folder))
        for folder in sorted(ZOO_DIR.iterdir())
        if (folder / "config.json").is_file()
    }


def list_organisms() -> list[Organism]:
    """Every organism `load()` can resolve by name, bundled first.

    Examples:
        >>> import mechscope as ms
        >>> [organism.name for organism in ms.list_organisms()][:2]
        ['toy', 'toy-moe']
    """
    return [*_bundled().values(), *_REGISTERED.values()]


def find_organism(name: str) -> Organism | None:
    """The organism called ``name``, or None.

    Examples:
        >>> toy = find_organism("toy")
        >>> toy.name, toy.path.name, toy.summary.split(";")[0]  # the summary comes from its CARD.md
        ('toy', 'toy', 'llama, 4 layers, d=128, 4 heads')
        >>> print(find_organism("no-such-organism"))
        None
    """
    return _bundled().get(name) or _REGISTERED.get(name)


def organism_path(name: str) -> Path:
    """The folder of organism ``name``.

    Examples:
        >>> folder = organism_path("toy-moe")  # a save_pretrained folder inside the package, with its card
        >>> folder.name, (folder / "config.json").is_file(), (folder / "CARD.md").is_file()
        ('toy-moe', True, True)
        >>> organism_path("toy-large")
        Traceback (most recent call last):
        ...
        mechscope.errors.ModelLoadError: no bundled organism named 'toy-large' (known: toy, toy-moe...)

    Raises:
        ModelLoadError: no organism has that name.
    """
    organism = find_organism(name)
    if organism is None:
        known = ", ".join(o.name for o in list_organisms()) or "none installed"
        raise ModelLoadError(f"no bundled organism named '{name}' (known: {known})")
    return organism.path


def canonical_source(source: str) -> str:
    """One spelling of where a model comes from: an organism's name or a folder as its resolved path, a hub id as is.

    Examples:
        >>> canonical_source("toy") == canonical_source(str(organism_path("toy")))  # one model, two spellings
        True
        >>> canonical_source("Qwen/Qwen3-0.6B")
        'Qwen/Qwen3-0.6B'
    """
    organism = find_organism(source)
    if organism is not None:
        return str(Path(organism.path).resolve())
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def check_provenance(made_for: str, model: str, what: str, *, force: bool = False) -> None:
    """Refuse to apply an object made for the model ``made_for`` to ``model`` unless ``force``.

    An object that names no model (older files, hand-made vectors) is accepted; ``"toy"`` and the toy's
    folder name the same model.

    Examples:
        >>> check_provenance("toy", str(organism_path("toy")), "direction")  # the same model: accepted
        >>> check_provenance("", "toy-moe", "direction")  # made for no model in particular: accepted
        >>> check_provenance("toy", "toy-moe", "direction")
        Traceback (most recent call last):
        ...
        mechscope.errors.ProvenanceError: the direction was made for 'toy', not 'toy-moe'; ...
        >>> check_provenance("toy", "toy-moe", "direction", force=True)  # the caller insists

    Raises:
        ProvenanceError: the two differ and ``force`` is off.
    """
    if not made_for or not model or force or made_for == model:
        return  # the same spelling needs no look-up (which stats the organisms' folders)
    if canonical_source(made_for) == canonical_source(model):
        return
    raise ProvenanceError(
        f"the {what} was made for '{made_for}', not '{model}'; a vector of the same width from another "
        "model means nothing here (pass --force, or force=True, to apply it anyway)"
    )
