"""How far to trust a reader: normalised-entropy confidence, top-k accuracy and calibration. Numpy only, no torch.

* `confidence` is ``1 − H(p)/log K`` (natural log, ``0·log 0 = 0``): 1 for a one-hot distribution, 0 for the
  uniform one over K classes.
* `expected_calibration_error` follows Guo et al. 2017 (*On Calibration of Modern Neural Networks*): M
  equal-width bins ``((m−1)/M, m/M]`` on [0, 1] (the first bin also holds 0), and
  ``ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|``. `reliability` returns the bins themselves.
* `score_reader` and `score_categories` turn scores into the `ReaderScore` / `CategoryScore` results.

Examples:
    >>> import numpy as np
    >>> float(confidence(np.array([[1.0, 0.0, 0.0, 0.0]]))[0]), float(confidence(np.full((1, 4), 0.25))[0])
    (1.0, 0.0)
    >>> round(expected_calibration_error(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 1, 1, 0]), n_bins=10), 6)
    0.1
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mechscope.concepts.interpreter_results import CategoryScore, ReaderScore, Reliability
from mechscope.errors import InputError

#: How far a row of probabilities may sum from 1 (float32 sums over thousands of classes).
SUM_TOLERANCE = 1e-3


def _probabilities(probs: ArrayLike) -> NDArray[np.float64]:
    values = np.asarray(probs, dtype=np.float64)
    if values.ndim != 2:
        raise InputError(f"probabilities must be [m, K]; got shape {values.shape}")
    if values.shape[0] == 0:
        raise InputError("no probabilities were given (m = 0); score at least one sample")
    if values.shape[1] < 2:
        raise InputError(f"confidence needs K >= 2 classes; got K = {values.shape[1]}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise InputError("probabilities must be finite and non-negative; pass softmax outputs, not logits")
    if np.abs(values.sum(axis=1) - 1.0).max() > SUM_TOLERANCE:
        raise InputError("each row of probabilities must sum to 1; pass softmax outputs, not logits")
    return values


def entropy(probs: ArrayLike) -> NDArray[np.float64]:
    """``H(p) = −Σ p log p`` of each row of ``probs`` ``[m, K]``, in nats, with ``0·log 0 = 0``.

    Examples:
        The uniform distribution over K classes has the most entropy, ``log K``:

        >>> import math, numpy as np
        >>> entropy(np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])).round(4).tolist()
        [0.6931, 1.3863]
        >>> round(math.log(2), 4), round(math.log(4), 4)
        (0.6931, 1.3863)
    """
    values = _probabilities(probs)
    logs = np.log(values, out=np.zeros_like(values), where=values > 0)
    result: NDArray[np.float64] = -(values * logs).sum(axis=1) + 0.0  # + 0.0: a certain row reads 0.0, not -0.0
    return result


def confidence(probs: ArrayLike) -> NDArray[np.float64]:
    """``1 − H(p)/log K`` of each row of ``probs`` ``[m, K]``: in [0, 1], 1 when one class has all the mass.

    Examples:
        >>> import numpy as np
        >>> probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
        >>> confidence(probs).round(3).tolist()  # leaning, undecided, sure
        [0.322, 0.0, 1.0]

    Raises:
        InputError: ``probs`` is not 2-D, is empty, has K < 2 columns, or its rows are not distributions.
    """
    values = _probabilities(probs)
    result: NDArray[np.float64] = np.clip(1.0 - entropy(values) / math.log(values.shape[1]), 0.0, 1.0)
    return result


def top_k_accuracy(scores: ArrayLike, y: ArrayLike, k: int) -> float:
    """The fraction of rows of ``scores`` ``[m, K]`` whose true class ``y[i]`` is among the k highest scores.

    A class tied with the true one counts as scored above it (a constant reader scores 0, not 1); with
    ``k >= K`` every row counts as correct. Scores may be ``-inf`` (a class a reader never predicts).

    Examples:
        >>> import numpy as np
        >>> scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
        >>> y = [2, 0, 2]  # the first row's class comes second
        >>> round(top_k_accuracy(scores, y, k=1), 4), top_k_accuracy(scores, y, k=2)
        (0.6667, 1.0)
        >>> top_k_accuracy(np.zeros((3, 3)), y, k=1)  # a constant reader: every class ties with the true one
        0.0

    Raises:
        InputError: shapes disagree, ``m = 0``, ``k < 1`` or a label is out of range.
    """
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(y)
    if values.ndim != 2 or labels.ndim != 1 or labels.shape[0] != values.shape[0]:
        raise InputError(f"scores must be [m, K] and y [m]; got {values.shape} and {labels.shape}")
    if values.shape[0] == 0:
        raise InputError("no samples to score (m = 0)")
    if np.isnan(values).any():
        raise InputError("scores hold NaN; the reader diverged or was given NaN features")
    if k < 1:
        raise InputError(f"k must be at least 1; got {k}")
    if labels.min() < 0 or labels.max() >= values.shape[1]:
        raise InputError(f"labels must lie in 0..{values.shape[1] - 1}; got {labels.min()}..{labels.max()}")
    if k >= values.shape[1]:
        return 1.0
    true_scores = values[np.arange(values.shape[0]), labels]
    # the classes scored at least as high as the true one (itself excluded): a tie counts against it
    rivals = (values >= true_scores[:, None]).sum(axis=1) - 1
    return float((rivals < k).mean())


def _binned(confidences: ArrayLike, correct: ArrayLike, n_bins: int) -> tuple[NDArray[np.float64], ...]:
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hits = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != hits.shape:
        raise InputError(f"confidence and correct must have one entry per sample; got {conf.shape} and {hits.shape}")
    if conf.size == 0:
        raise InputError("no predictions to calibrate (m = 0)")
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1; got {n_bins}")
    if not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0:
        raise InputError("confidences must lie in [0, 1]")
    if not np.isin(hits, (0.0, 1.0)).all():
        raise InputError("correct must hold 0/1 or booleans")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin m holds (edges[m], edges[m + 1]]; confidence 0 joins the first bin
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    conf_sums = np.bincount(index, weights=conf, minlength=n_bins).astype(np.float64)
    hit_sums = np.bincount(index, weights=hits, minlength=n_bins).astype(np.float64)
    return edges, counts, conf_sums, hit_sums


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) over ``n_bins`` equal-width bins on [0, 1].

    Examples:
        Three right answers in four are well calibrated at confidence 0.75, overconfident at 0.9:

        >>> import numpy as np
        >>> expected_calibration_error(np.full(4, 0.75), [1, 1, 1, 0])
        0.0
        >>> round(expected_calibration_error(np.full(4, 0.9), [1, 1, 1, 0]), 6)
        0.15

    Args:
        confidence: ``[m]`` confidences in [0, 1] (the top-class probability, or `confidence`).
        correct: ``[m]`` whether each prediction was right (bool or 0/1).
        n_bins: the number of bins M.

    Returns:
        ``Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|``, in [0, 1].

    Raises:
        InputError: lengths differ, no predictions, a confidence outside [0, 1] or ``n_bins < 1``.
    """
    _edges, counts, conf_sums, hit_sums = _binned(confidence, correct, n_bins)
    return float(np.abs(hit_sums - conf_sums).sum() / counts.sum())


def reliability(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> list[Reliability]:
    """The ``n_bins`` bins of a reliability diagram (empty bins included, with None means).

    Examples:
        >>> bins = reliability([0.2, 0.9, 0.9, 0.6], [False, True, False, True], n_bins=4)
        >>> [(b.upper, b.count, b.accuracy) for b in bins]
        [(0.25, 1, 0.0), (0.5, 0, None), (0.75, 1, 1.0), (1.0, 2, 0.5)]
        >>> bins[3]
        Reliability(lower=0.75, upper=1.0, count=2, mean_confidence=0.9, accuracy=0.5)

    Raises:
        InputError: as `expected_calibration_error`.
    """
    edges, counts, conf_sums, hit_sums = _binned(confidence, correct, n_bins)
    bins: list[Reliability] = []
    for m in range(n_bins):
        count = int(counts[m])
        bins.append(
            Reliability(
                lower=float(edges[m]),
                upper=float(edges[m + 1]),
                count=count,
                mean_confidence=min(1.0, float(conf_sums[m] / count)) if count else None,
                accuracy=float(hit_sums[m] / count) if count else None,
            )
        )
    return bins


def score_reader(name: str, scores: ArrayLike, y: ArrayLike) -> ReaderScore:
    """Top-1 and top-5 accuracy of ``scores`` ``[m, K]`` against labels ``y``, with chance ``1/K``, ``5/K``.

    Examples:
        >>> import numpy as np
        >>> probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
        >>> score = score_reader("centroid", probs, [0, 1, 2, 1])  # the last sample is misread
        >>> score.top1, score.top5, score.n, round(score.chance_top1, 4)  # with K = 3, top-5 is always right
        (0.75, 1.0, 4, 0.3333)
    """
    values = np.asarray(scores, dtype=np.float64)
    top1, top5 = top_k_accuracy(values, y, 1), top_k_accuracy(values, y, 5)
    n_classes = values.shape[1]
    return ReaderScore(
        name=name,
        top1=top1,
        top5=top5,
        n=int(values.shape[0]),
        chance_top1=1.0 / n_classes,
        chance_top5=min(5, n_classes) / n_classes,
    )


def score_categories(name: str, category_probs: ArrayLike, category_y: ArrayLike) -> CategoryScore:
    """Category accuracy of ``category_probs`` ``[m, C]`` against ``category_y``, with the majority baseline.

    Examples:
        >>> import numpy as np
        >>> probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
        >>> score_categories("linear", probs, [0, 1, 2, 1])  # always answering category 1 scores 0.5
        CategoryScore(name='linear', accuracy=0.75, majority=0.5, n=4, n_categories=3)
    """
    values = np.asarray(category_probs, dtype=np.float64)
    labels = np.asarray(category_y)
    accuracy = top_k_accuracy(values, labels, 1)
    majority = float(np.bincount(labels, minlength=values.shape[1]).max() / labels.shape[0])
    return CategoryScore(
        name=name, accuracy=accuracy, majority=majority, n=int(labels.shape[0]), n_categories=int(values.shape[1])
    )
