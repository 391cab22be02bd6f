"""Input files of the CLI (prompt lists, training text, reference prompts), read with one-line errors.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

from mechscope.errors import InputError


def read_lines(path: Path, what: str = "prompt file") -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped.

    Raises:
        InputError: there is no file at ``path``, it is a folder, or it is not UTF-8 text.
    """
    if path.is_dir():
        raise InputError(f"'{path}' is a folder; give the {what} itself (one entry per line)")
    if not path.is_file():
        raise InputError(f"no {what} at '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"the {what} '{path}' is not UTF-8 text (byte {error.start}); save it as UTF-8 and try again"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_numbers(text: str, option: str) -> list[float]:
    """Comma-separated finite numbers, e.g. ``--coefficients -4,0,4``.

    Raises:
        InputError: nothing is given, a part is not a number, or a number is not finite.
    """
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise InputError(f"{option} is empty; give numbers separated by commas, e.g. -4,0,4")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise InputError(f"bad {option} '{text}'; write numbers separated by commas, e.g. -4,0,4") from None
    if not all(math.isfinite(n) for n in numbers):
        raise InputError(f"{option} '{text}' holds a value that is not finite; use ordinary numbers")
    return numbers


def at_least(value: int, minimum: int, option: str) -> int:
    """``value`` if it is at least ``minimum``; else a one-line error naming ``option``."""
    if value < minimum:
        raise InputError(f"{option} must be at least {minimum}, got {value}")
    return value


def finite(value: float, option: str) -> float:
    """``value`` if it is a finite number; else a one-line error naming ``option``."""
    if not math.isfinite(value):
        raise InputError(f"{option} must be a finite number, got {value}")
    return value


def token_count(text: str, option: str) -> int:
    """A count written ``2M``, ``500K``, ``1.5M``, ``1G`` or ``200000`` (``_`` and ``,`` allowed), as an int.

    >>> [token_count(t, "--tokens") for t in ("2M", "500k", "1.5M", "12_000")]
    [2000000, 500000, 1500000, 12000]

    Raises:
        InputError: not a positive count.
    """
    cleaned = text.strip().replace("_", "").replace(",", "")
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(cleaned[-1:].upper(), 1)
    number = cleaned[:-1] if scale > 1 else cleaned
    try:
        value = float(number)
    except ValueError:
        raise InputError(f"{option} wants a count such as 2M, 500K or 200000, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise InputError(f"{option} must be a positive count, got {text!r}")
    return round(value * scale)


def read_corpus(path: Path | None, prompts: list[str] | None) -> list[str]:
    """A corpus: the lines of ``--prompts FILE``, then every ``-p``; one of them is needed.

    Raises:
        InputError: neither is given, the file cannot be read, or the corpus has no prompt.
    """
    corpus = optional_corpus(path, prompts)
    if corpus is None:
        raise InputError("give a corpus with --prompts FILE (one prompt per line) or prompts with -p")
    return corpus


def optional_corpus(path: Path | None, prompts: list[str] | None) -> list[str] | None:
    """`read_corpus` where a corpus is optional: None when neither ``--prompts`` nor ``-p`` is given."""
    if path is None and not prompts:
        return None
    corpus = [*(read_lines(path, "corpus file") if path is not None else []), *(prompts or [])]
    if not corpus:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    return corpus
