"""Refinement stages 1–3: more contexts for the concepts a reader is unsure of, folded into the encyclopedia.

* **Stage 1** puts each concept's term into training templates it has not had yet (and, once per concept,
  into held-out templates, stored apart for evaluation and never folded into a mean).
* **Stage 2** asks a generator model to write about the term and uses what it writes (with the term in it)
  as contexts.
* **Stage 3** is adversarial: of the training templates a concept has not had, it keeps those on which a
  reader (the interpreter) gives the true concept the lowest probability.

Every stage captures the encyclopedia's layers with the encyclopedia's pooling and goes through
`mechscope.concepts.encyclopedia.add_samples` (running mean and variance, copy-and-swap): a failure loses
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechscope.concepts.concept import Concept
from mechscope.concepts.encyclopedia import GENERATED, HELD_OUT, TRAIN, Encyclopedia, add_samples
from mechscope.concepts.pooling import pooled
from mechscope.concepts.templates import TemplateBank, bank_for, choose
from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

#: A reader's probability of each sample's true concept: ``score(x [m, n_layers, d], concept [m]) -> [m]``.
TrueConceptScore = Callable[[np.ndarray, np.ndarray], np.ndarray]
GENERATOR_PROMPT = "Here is a sentence about {t}:"


@dataclass(frozen=True)
class Context:
    """One text to capture for a concept: its template (or -2 if generated) and split."""

    concept: int
    template: int
    split: int
    text: str


def bank_of(concept: Concept, bank: str) -> TemplateBank:
    """The template bank ``bank`` for ``concept``; ``auto`` means ``toyworld`` for the organisms' concepts."""
    if bank == "auto":
        bank = "toyworld" if concept.category.startswith("toy:") else "general"
    return bank_for(bank, concept.category)


def used_templates(encyclopedia: Encyclopedia) -> tuple[dict[int, set[int]], set[int]]:
    """Per concept the training templates it already has, and the concepts that have held-out samples."""
    samples = encyclopedia.samples(layers=[])
    used: dict[int, set[int]] = {}
    for concept, template, split in zip(samples.concept, samples.template, samples.split, strict=True):
        if split == TRAIN and template >= 0:
            used.setdefault(int(concept), set()).add(int(template))
    return used, {int(c) for c, s in zip(samples.concept, samples.split, strict=True) if s == HELD_OUT}


def _fresh(concept_id: str, pool: int, used: set[int]) -> list[int]:
    return [i for i in choose(concept_id, pool, pool) if i not in used]


def template_contexts(
    encyclopedia: Encyclopedia, indices: Sequence[int], n: int, *, held_out: int = 2, bank: str = "auto"
) -> list[Context]:
    """Stage 1: ``n`` unused training templates per concept, plus ``held_out`` held-out ones where it has none.

    Raises:
        InputError: a concept has fewer than ``n`` unused training templates left.
    """
    used, evaluated = used_templates(encyclopedia)
    contexts = []
    for i in indices:
        concept = encyclopedia.concepts[i]
        templates = bank_of(concept, bank)
        fresh = _fresh(concept.id, len(templates.train), used.get(i, set()))
        if len(fresh) < n:
            raise InputError(f"{concept.id} has {len(fresh)} unused training templates, fewer than {n}; ask for fewer")
        contexts += [Context(i, t, TRAIN, templates.train[t].format(t=concept.term)) for t in fresh[:n]]
        if held_out and i not in evaluated:
            pool = len(templates.held_out)
            for t in choose(concept.id, min(held_out, pool), pool, "held_out"):
                contexts.append(Context(i, t, HELD_OUT, templates.held_out[t].format(t=concept.term)))
    return contexts


def generated_contexts(
    generator: LanguageModel,
    encyclopedia: Encyclopedia,
    indices: Sequence[int],
    n: int,
    *,
    prompt: str = GENERATOR_PROMPT,
    max_new_tokens: int = 32,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[Context]:
    """Stage 2: ``n`` contexts per concept written by ``generator`` (sampled), each containing the term.

    A continuation that does not mention the term gets the term put in front (``"dog: ..."``), so the
    context is always about the concept it is filed under.
    """
    import torch

    if "{t}" not in prompt:
        raise InputError("the generator prompt needs a {t} slot for the term")
    torch.manual_seed(seed)
    contexts = []
    for i in indices:
        term = encyclopedia.concepts[i].term
        asks = [prompt.format(t=term)] * n
        texts = generator.generate(asks, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
        for text in texts:
            body = " ".join(text.split())
            contexts.append(Context(i, GENERATED, TRAIN, body if term.lower() in body.lower() else f"{term}: {body}"))
    return contexts


def adversarial_contexts(
    lm: LanguageModel,
    encyclopedia: Encyclopedia,
    indices: Sequence[int],
    n: int,
    score: TrueConceptScore,
    *,
    bank: str = "auto",
    batch_size: int = 64,
) -> list[Context]:
    """Stage 3: of each concept's unused training templates, the ``n`` where ``score`` is lowest."""
    used, _ = used_templates(encyclopedia)
    candidates = []
    for i in indices:
        concept = encyclopedia.concepts[i]
        templates = bank_of(concept, bank)
        for t in _fresh(concept.id, len(templates.train), used.get(i, set())):
            candidates.append(Context(i, t, TRAIN, templates.train[t].format(t=concept.term)))
    if not candidates:
        raise InputError(
            "these concepts have no unused training templates left for stage 3 (all are in the encyclopedia); "
            "use fewer stage-1 --templates, or stage 2 for new contexts"
        )
    values = _capture(lm, encyclopedia, candidates, batch_size)
    x = np.stack([values[layer].numpy() for layer in encyclopedia.info.layers], axis=1)
    p = score(x, np.array([c.concept for c in candidates]))
    chosen: list[Context] = []
    for i in indices:
        mine = [j for j, c in enumerate(candidates) if c.concept == i]
        chosen += [candidates[j] for j in sorted(mine, key=lambda j: float(p[j]))[:n]]
    return chosen


def _capture(
    lm: LanguageModel, encyclopedia: Encyclopedia, contexts: Sequence[Context], batch_size: int, progress: bool = False
) -> dict[int, Any]:
    """The contexts pooled as the encyclopedia pools (its layers; ``term`` poolings read the concept's term)."""
    terms = [encyclopedia.concepts[c.concept].term for c in contexts]
    return pooled(
        lm,
        [c.text for c in contexts],
        encyclopedia.info.layers,
        pooling=encyclopedia.info.pooling,
        terms=terms,
        batch_size=batch_size,
        progress=progress,
    )


def refine(
    lm: LanguageModel,
    path: str | os.PathLike[str],
    contexts: Sequence[Context],
    stage: int,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> Encyclopedia:
    """Capture ``contexts`` with ``lm`` at the encyclopedia's layers and add them as stage ``stage``.

    Raises:
        InputError: no contexts, a stage outside 1–3, or ``lm`` is not the model the encyclopedia is of.
    """
    encyclopedia = Encyclopedia(path)
    if stage not in (1, 2, 3):
        raise InputError(f"refinement stages are 1, 2 and 3, not {stage}")
    if Path(lm.source).name != Path(encyclopedia.info.model).name and lm.source != encyclopedia.info.model:
        raise InputError(
            f"the encyclopedia is of {encyclopedia.info.model}, not {lm.source}; refine it with the same model"
        )
    if not contexts:
        raise InputError("nothing to refine: no contexts (are any concepts uncertain?)")
    layers = encyclopedia.info.layers
    values = _capture(lm, encyclopedia, contexts, batch_size, progress)
    add_samples(
        path,
        {layer: values[layer].numpy() for layer in layers},
        np.array([c.concept for c in contexts], np.int64),
        np.array([c.template for c in contexts], np.int64),
        np.array([c.split for c in contexts], np.int64),
        stage,
    )
    return Encyclopedia(path)
