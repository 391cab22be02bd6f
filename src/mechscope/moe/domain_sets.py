"""Domains for expert specialization: named prompt sets, read from a folder of text files.

A domain is one UTF-8 ``.txt`` file, one prompt per line (blank lines skipped); its name is the file's stem.
A file may start with one directive line, ``# span: OPEN CLOSE``: then only the tokens from an ``OPEN`` marker
to the next ``CLOSE`` marker, both included, count for the domain (a marker the model's vocabulary lacks is
matched as the run of tokens it splits into). The rest of each prompt still runs through the model, as
context, but is not counted. That is how a domain can be "the tokens of tool calls" without its prompts being
calls alone, which would route differently (routing depends on context). No other line is read as a directive.
The choice matters: on toy-moe, whose expert 2 takes every tool-call token at layer 1, the ``tool_calls``
prompts give E2 a top-1 share of 1.00 counted inside the span, but 0.61 counted whole (the requests around the
calls are ordinary text).

The default set (`default_domains`, shipped in ``mechscope/moe/domains``) was generated once from the
organisms' own corpus generators (`mechscope.zoo.corpus`, seed 2024): one file of facts per relation
(``facts_capital`` ... ``facts_symbol``, 40 statements each), ``tool_calls`` (60 requests answered with a
call; the span counts ``<call>`` ... ``</call>``), ``pirate`` and ``formal`` (the 40 sentences of each
register) and ``repeated_names`` (50 stories repeating made-up names).

Examples:
    >>> [d.name for d in default_domains()][:3], default_domains()[-1].span
    (['facts_capital', 'facts_color', 'facts_opposite'], ('<call>', '</call>'))
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "sea.txt").write_text("The sea is calm.\\n\\nThe ship sails.\\n", encoding="utf-8")
    >>> load_domains(folder)
    [Domain(name='sea', prompts=('The sea is calm.', 'The ship sails.'), span=None)]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mechscope.errors import InputError

_SPAN = re.compile(r"#\s*span:\s*(\S+)\s+(\S+)\s*")


@dataclass(frozen=True)
class Domain:
    """A named prompt set.

    Attributes:
        span: ``(open, close)`` marker tokens: only tokens from ``open`` to ``close`` (included) count; None
            counts every token of every prompt.
    """

    name: str
    prompts: tuple[str, ...]
    span: tuple[str, str] | None = None


def parse_domain(name: str, text: str, where: str = "") -> Domain:
    """A domain from a file's text (see the module for the format).

    Raises:
        InputError: the text holds no prompt.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    span = None
    if lines and (directive := _SPAN.fullmatch(lines[0])):
        span = (directive.group(1), directive.group(2))
        lines = lines[1:]
    if not lines:
        raise InputError(f"the domain file {where or name!r} holds no prompt; write one prompt per line")
    return Domain(name, tuple(lines), span)


def load_domains(path: Path | str) -> list[Domain]:
    """The domains of a folder: one per ``.txt`` file, sorted by name.

    Examples:
        A file may open with a span directive: then only the tokens between the markers count.

        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "calls.txt").write_text("# span: <call> </call>\\nTime? <call>time(city=Bern)</call>\\n")
        >>> _ = (folder / "sea.txt").write_text("The sea is calm.\\n")
        >>> _ = (folder / "notes.md").write_text("not a domain\\n")
        >>> [(d.name, d.prompts, d.span) for d in load_domains(folder)]  # doctest: +NORMALIZE_WHITESPACE
        [('calls', ('Time? <call>time(city=Bern)</call>',), ('<call>', '</call>')),
         ('sea', ('The sea is calm.',), None)]

    Raises:
        InputError: no folder at ``path``, no ``.txt`` file in it, a file that is empty or not UTF-8.
    """
    folder = Path(path)
    if not folder.is_dir():
        what = "a file" if folder.exists() else "nothing"
        raise InputError(f"the domains folder '{folder}' is {what}; give a folder of .txt files (one prompt per line)")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise InputError(f"the domains folder '{folder}' has no .txt file; write one file per domain")
    return [parse_domain(file.stem, _read(file), str(file)) for file in files]


def default_domains() -> list[Domain]:
    """The domains shipped with mechscope, made to run on the organisms (see the module).

    Examples:
        >>> {d.name: len(d.prompts) for d in default_domains()}  # doctest: +NORMALIZE_WHITESPACE
        {'facts_capital': 40, 'facts_color': 40, 'facts_opposite': 40, 'facts_sound': 40, 'facts_symbol': 40,
         'formal': 40, 'pirate': 40, 'repeated_names': 50, 'tool_calls': 60}
    """
    folder = resources.files("mechscope.moe").joinpath("domains")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".txt")), key=lambda f: f.name)
    return [parse_domain(f.name.removesuffix(".txt"), f.read_text(encoding="utf-8")) for f in files]


def as_domains(domains: Mapping[str, Sequence[str]] | Sequence[Domain] | Path | str | None) -> list[Domain]:
    """Any way of naming domains as a list of `Domain`: a mapping name -> prompts, domains, a folder, or None
    (the default set).

    Raises:
        InputError: no domain, a domain without prompts, or a prompt that is not a string.
    """
    if domains is None:
        return default_domains()
    if isinstance(domains, Path | str):
        return load_domains(domains)
    if isinstance(domains, Mapping):
        found = []
        for name, prompts in domains.items():
            if isinstance(prompts, str):
                raise InputError(f"domain {name!r}: give a list of prompts, not one string")
            found.append(Domain(str(name), tuple(prompts)))
    else:
        found = list(domains)
    if not found:
        raise InputError("no domain given; pass at least one prompt set (or None for the default set)")
    for domain in found:
        if not domain.prompts:
            raise InputError(f"domain {domain.name!r} has no prompt")
        if not all(isinstance(p, str) and p.strip() for p in domain.prompts):
            raise InputError(f"domain {domain.name!r} has an empty prompt or one that is not a string")
    if len({d.name for d in found}) != len(found):
        raise InputError(f"two domains share a name: {[d.name for d in found]}")
    return found


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"the domain file '{file}' is not UTF-8 text (byte {error.start}); save it as UTF-8 and try again"
        ) from None
