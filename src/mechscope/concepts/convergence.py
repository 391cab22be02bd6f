"""The convergence study: does a concept's mean activation settle within about ten contexts?

For each concept, ``max_n`` training-template contexts and a *held-out reference*: the mean over the
held-out templates (never among the n). For the running mean ``m_n`` of the first n contexts, `curves`
gives the relative difference and cosine against the reference, the sample variance, and the width of
the 95% confidence interval of the mean. Vectors are centred first by default (the mean over every
context of every concept in the study is subtracted): mean-pooled sentence states share a large common
component, which makes raw cosines near 1 for any two sentences and would let everything "converge".

A concept is converged at n when its relative difference is at most ``tolerance`` and its cosine at least
``min_cosine``, and it stays so up to ``max_n``. The defaults (0.5 and 0.85) were chosen on MiniLM's last
layer so that the seed's five concepts spread across n instead of all passing at n = 1 or none ever.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.normal(size=8)
    >>> samples = reference + rng.normal(scale=0.5, size=(20, 8))
    >>> c = curves(samples, reference)
    >>> bool(c["relative_difference"][-1] < c["relative_difference"][0])
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mechscope.concepts.concept import Concept, ConceptList
from mechscope.concepts.convergence_results import ConceptConvergence, ConvergenceStudy
from mechscope.concepts.pooling import pooled, resolve
from mechscope.concepts.templates import GENERAL, TemplateBank, contexts_for
from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel

TOLERANCE = 0.5
MIN_COSINE = 0.85


def curves(samples: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """The running mean's curves against ``reference`` for ``samples`` ``[N, d]``: each an array of N values.

    Keys: ``relative_difference``, ``cosine``, ``variance`` (mean over dims of the ddof-1 sample variance;
    0 at n = 1) and ``ci_width`` (mean over dims of ``2 t_{0.975, n-1} s / sqrt(n)``; NaN at n = 1).

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> reference = rng.normal(size=8)
        >>> c = curves(reference + rng.normal(scale=0.5, size=(20, 8)), reference)  # 20 noisy samples
        >>> sorted(c), c["cosine"].shape
        (['ci_width', 'cosine', 'relative_difference', 'variance'], (20,))
        >>> c["relative_difference"][[0, 4, 19]].round(3).tolist()  # after 1, 5 and 20 samples
        [0.85, 0.273, 0.141]
        >>> c["cosine"][[0, 4, 19]].round(3).tolist()
        [0.692, 0.977, 0.991]
    """
    from scipy.stats import t as student

    x = np.asarray(samples, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    n = np.arange(1, x.shape[0] + 1, dtype=np.float64)[:, None]
    running = np.cumsum(x, axis=0) / n
    squares = np.cumsum(x**2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sample_var = np.where(n > 1, (squares - n * running**2) / np.maximum(n - 1, 1), 0.0)
    sample_var = np.maximum(sample_var, 0.0)  # rounding can make a zero variance slightly negative
    norm_ref = np.linalg.norm(ref)
    difference = np.linalg.norm(running - ref, axis=1) / norm_ref
    cosine = running @ ref / (np.linalg.norm(running, axis=1) * norm_ref)
    quantile = np.array([student.ppf(0.975, k - 1) if k > 1 else np.nan for k in n[:, 0]])
    width = 2 * quantile[:, None] * np.sqrt(sample_var) / np.sqrt(n)
    return {
        "relative_difference": difference,
        "cosine": cosine,
        "variance": sample_var.mean(axis=1),
        "ci_width": width.mean(axis=1),
    }


def converged_at(difference: np.ndarray, cosine: np.ndarray, tolerance: float, min_cosine: float) -> int | None:
    """The first n (1-based) from which ``difference <= tolerance`` and ``cosine >= min_cosine`` hold to the end.

    Examples:
        >>> import numpy as np
        >>> difference = np.array([0.9, 0.4, 0.6, 0.3, 0.2])
        >>> cosine = np.array([0.5, 0.9, 0.9, 0.95, 0.97])
        >>> converged_at(difference, cosine, tolerance=0.5, min_cosine=0.85)  # good at n = 2, lost at 3, back at 4
        4
        >>> converged_at(difference, cosine, tolerance=0.1, min_cosine=0.85) is None  # never close enough
        True
    """
    good = (difference <= tolerance) & (cosine >= min_cosine)
    if not good[-1]:
        return None
    bad = np.flatnonzero(~good)
    return int(bad[-1]) + 2 if len(bad) else 1


def convergence_study(
    lm: LanguageModel,
    concepts: ConceptList | Sequence[Concept],
    *,
    layer: int = -1,
    max_n: int = 20,
    bank: TemplateBank = GENERAL,
    tolerance: float = TOLERANCE,
    min_cosine: float = MIN_COSINE,
    center: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> ConvergenceStudy:
    """Run the study for ``concepts`` at ``layer`` (one batched pass over every context).

    Examples:
        >>> import mechscope as ms
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> from mechscope.concepts.templates import bank_for
        >>> lm = ms.load("toy")
        >>> countries = [c for c in toyworld_concepts() if c.category == "toy:country"][:6]
        >>> bank = bank_for("toyworld", "toy:country")  # 3 training templates, 1 held out
        >>> study = convergence_study(lm, countries, layer=1, max_n=3, bank=bank, center=False)
        >>> [(c.term, c.converged_at) for c in study.concepts]
        [('France', 2), ('Germany', 1), ('Italy', 1), ('Spain', 3), ('Portugal', 3), ('Japan', 1)]
        >>> [round(v, 2) for v in study.concepts[0].cosine]  # France's running mean nears its held-out reference
        [0.87, 0.92, 0.95]
        >>> study.fraction_converged(1), study.fraction_converged(3)
        (0.5, 1.0)

    Raises:
        InputError: no concepts, ``max_n`` outside 1 … the bank's training templates, or a bad layer.
    """
    chosen = list(concepts)
    if not chosen:
        raise InputError("name at least one concept for the convergence study")
    if not 1 <= max_n <= len(bank.train):
        raise InputError(f"--max-n must be between 1 and {len(bank.train)} (the training templates)")
    (absolute,) = resolve(lm, [layer])
    texts: list[str] = []
    for concept in chosen:
        texts += [text for _, text in contexts_for(concept.id, concept.term, bank, max_n)]
        texts += [text for _, text in contexts_for(concept.id, concept.term, bank, len(bank.held_out), held_out=True)]
    values = pooled(lm, texts, [absolute], batch_size=batch_size, progress=progress)[absolute].numpy()
    values = values.astype(np.float64)
    if center:
        values = values - values.mean(axis=0)
    per = max_n + len(bank.held_out)
    results = []
    for i, concept in enumerate(chosen):
        block = values[i * per : (i + 1) * per]
        found = curves(block[:max_n], block[max_n:].mean(axis=0))
        results.append(
            ConceptConvergence(
                id=concept.id,
                term=concept.term,
                kind=concept.kind,
                relative_difference=found["relative_difference"].tolist(),
                cosine=found["cosine"].tolist(),
                variance=found["variance"].tolist(),
                ci_width=[None if np.isnan(v) else float(v) for v in found["ci_width"]],
                converged_at=converged_at(found["relative_difference"], found["cosine"], tolerance, min_cosine),
            )
        )
    return ConvergenceStudy(
        model=str(lm.source),
        layer=absolute,
        max_n=max_n,
        tolerance=tolerance,
        min_cosine=min_cosine,
        centered=center,
        n_reference=len(bank.held_out),
        concepts=results,
    )
