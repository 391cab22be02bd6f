"""Concept lenses from an encyclopedia: its samples at one layer, its siblings, neutral text for thresholds.

The lenses train on the encyclopedia's training samples at ``layer`` (each concept against its WordNet
siblings and random concepts), with the tokens of one half of a neutral corpus as background negatives of
every concept; their thresholds are set on the tokens of the other half (so the false-positive rate is
measured on tokens the fit never saw); their AUROC is measured on the held-out-template samples.

For lenses that monitor generation token by token, build the encyclopedia with ``pooling="term_last"``:
lenses of sentence means score every token of a sentence, not the concept's (measured on ``toy``: the
subject is top-1 on its own token for 2% of subjects with mean-pooled lenses, 99% with ``term_last``).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import TYPE_CHECKING

import torch

from mechscope.concepts.encyclopedia import Encyclopedia
from mechscope.concepts.lenses import Lenses, calibrate, fit_lenses
from mechscope.concepts.monitor import token_states
from mechscope.concepts.neutral import neutral_texts
from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

NEGATIVES = ("siblings", "random")


def fit_from_encyclopedia(
    lm: LanguageModel,
    path: str | os.PathLike[str],
    layer: int,
    *,
    negatives: Collection[str] = NEGATIVES,
    n_random: int = 20,
    neutral: str | os.PathLike[str] | None = None,
    fpr: float = 0.01,
    steps: int = 100,
    progress: bool = False,
) -> Lenses:
    """Fit, calibrate and score one lens per concept of the encyclopedia at ``path``, read at ``layer``.

    Raises:
        InputError: unknown negatives, a layer the encyclopedia lacks, or another model than ``lm``.
    """
    unknown = set(negatives) - set(NEGATIVES)
    if unknown or not negatives:
        raise InputError(f"negatives are siblings and/or random, not {sorted(unknown) or 'nothing'}")
    encyclopedia = Encyclopedia(path)
    absolute = encyclopedia.layer(layer)
    site = f"resid_post.{absolute}"
    train = encyclopedia.samples([absolute], split="train")
    held = encyclopedia.samples([absolute], split="held-out")
    k = len(encyclopedia)
    siblings = encyclopedia.concepts.siblings() if "siblings" in negatives else [[] for _ in range(k)]
    toyworld = all(c.category.startswith("toy:") for c in encyclopedia.concepts)
    texts = neutral_texts(neutral, toyworld)
    if len(texts) < 2:
        raise InputError("the neutral corpus needs at least two texts (half background, half thresholds)")
    background = token_states(lm, texts[0::2], site)
    lenses = fit_lenses(
        torch.tensor(train.x[:, 0]),
        torch.tensor(train.concept, dtype=torch.long),
        encyclopedia.concepts.ids(),
        [c.term for c in encyclopedia.concepts],
        siblings,
        n_random=n_random if "random" in negatives else 0,
        steps=steps,
        held_out=(torch.tensor(held.x[:, 0]), torch.tensor(held.concept, dtype=torch.long)) if len(held) else None,
        site=site,
        model=encyclopedia.info.model,
        background=background,
        progress=progress,
    )
    return calibrate(lenses, token_states(lm, texts[1::2], site), fpr=fpr)
