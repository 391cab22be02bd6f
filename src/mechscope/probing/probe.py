"""Linear probes scored honestly: grouped cross-validation, a majority baseline, a control task, a p-value.

`probe` answers "can a linear read-out recover this label from these features, on groups (templates) it
never saw?". Everything that learns from data is fitted inside each fold, on the training folds only: the
logistic probe is a ``Pipeline(StandardScaler, LogisticRegression)``, so the scaler never sees a test fold
(fitting it on all the data first, as the original pipeline did, leaks the test folds into training); the
difference-of-means probe takes its class means and threshold from the training folds.

An accuracy means little alone, so the result carries what to compare it with: the majority baseline (the
accuracy of always guessing the most common class; never below 1/K for K balanced classes; a fold's own
training majority is no baseline under grouped folds, where it is often that fold's test minority), the
control task (the same probe trained on
shuffled labels; selectivity = accuracy - control accuracy) and a permutation p-value. Where every group has
a single label (a template always makes one class), whole groups are shuffled, so the null keeps the data's
structure; otherwise single labels are.

scikit-learn is imported when a probe runs (``pip install scikit-learn``).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([0, 1], 40)
>>> features = rng.normal(size=(80, 5)) + 6.0 * labels[:, None]
>>> groups = np.arange(80) // 5                      # 16 templates of 5 prompts, each of one class
>>> score = probe(features, labels, groups, permutations=20)
>>> score.accuracy, score.majority, round(score.p_value, 3)
(1.0, 0.5, 0.048)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mechscope.errors import InputError
from mechscope.probing.results import ProbeMethod, ProbeScore

Split = tuple[np.ndarray, np.ndarray]


class _Classifier(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray) -> Any: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class DiffMeansClassifier:
    """Binary classifier: project onto ``mean(class 1) - mean(class 0)``, threshold at the projected midpoint.

    Examples:
        >>> clf = DiffMeansClassifier().fit(np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([0, 1]))
        >>> clf.direction.tolist(), clf.threshold, clf.predict(np.array([[0.9, 5.0], [1.1, -5.0]])).tolist()
        ([2.0, 0.0], 2.0, [0, 1])
    """

    def __init__(self) -> None:
        self.direction = np.zeros(0)
        self.threshold = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> DiffMeansClassifier:
        """Class means of ``x`` for labels 0 and 1 (both must be present)."""
        if set(np.unique(y).tolist()) != {0, 1}:
            raise InputError("the difference-of-means probe needs labels 0 and 1, both present")
        mean0, mean1 = x[y == 0].mean(axis=0), x[y == 1].mean(axis=0)
        self.direction = mean1 - mean0
        self.threshold = float((self.direction @ mean0 + self.direction @ mean1) / 2.0)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """1 where the projection exceeds the threshold, else 0."""
        return (x @ self.direction > self.threshold).astype(np.int64)


class _Constant:
    """Predicts the one class a single-class training fold has."""

    def __init__(self, value: int) -> None:
        self.value = value

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Constant:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value, dtype=np.int64)


def _classifier(method: ProbeMethod, seed: int) -> _Classifier:
    if method == "diff_means":
        return DiffMeansClassifier()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline: _Classifier = Pipeline(
        [("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=1000, random_state=seed))]
    )
    return pipeline


def template_folds(y: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> list[Split]:
    """``(train, test)`` index arrays of a stratified grouped k-fold: no group is on both sides of a split.

    ``min(folds, groups, groups of the rarest class)`` folds; folds that come out empty are dropped.

    Examples:
        >>> import numpy as np
        >>> from mechscope.probing.probe import template_folds
        >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
        >>> groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])  # six templates of two prompts
        >>> splits = template_folds(y, groups, folds=3, seed=0)
        >>> [test.tolist() for _, test in splits]  # each template is tested once, in a fold with both classes
        [[0, 1, 10, 11], [4, 5, 8, 9], [2, 3, 6, 7]]
        >>> any(set(groups[train]) & set(groups[test]) for train, test in splits)
        False
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InputError(f"grouped cross-validation needs at least two groups (templates); got {n_groups}")
    # Stratified folds cannot outnumber the groups of the rarest class.
    per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    k = min(folds, n_groups, *per_class)
    if k < 2:
        raise InputError(
            f"class {int(np.argmin(per_class))} occurs in only one template; held-out evaluation needs every class "
            "in at least two templates"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has fewer members than n_splits"
        splits = [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups) if len(test)]
    return splits


def heldout_predictions(
    x: np.ndarray, y: np.ndarray, splits: Sequence[Split], method: ProbeMethod, seed: int = 0
) -> np.ndarray:
    """Each example's prediction by the probe fitted on the training side of the split that holds it out.

    Examples:
        >>> import numpy as np
        >>> from mechscope.probing.probe import heldout_predictions, template_folds
        >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
        >>> groups = np.arange(12) // 2
        >>> x = np.random.default_rng(0).normal(size=(12, 3)) + 3.0 * y[:, None]  # the classes lie apart
        >>> splits = template_folds(y, groups, folds=3, seed=0)
        >>> heldout_predictions(x, y, splits, "diff_means").tolist() == y.tolist()
        True
    """
    predictions = np.full(len(y), -1, dtype=np.int64)
    for train, test in splits:
        classes = np.unique(y[train])
        model = _Constant(int(classes[0])) if len(classes) == 1 else _classifier(method, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on shuffled labels say nothing useful
            model.fit(x[train], y[train])
            predictions[test] = model.predict(x[test])
    return predictions


def majority_baseline(y: np.ndarray, splits: Sequence[Split]) -> tuple[float, list[float]]:
    """Pooled and per-fold accuracy of always guessing the class most common among the tested examples.

    Ties go to the smaller class index.

    Examples:
        The class most common over every tested example is guessed in every fold (here class 1), even in a fold
        where it is the minority:

        >>> import numpy as np
        >>> from mechscope.probing.probe import majority_baseline
        >>> y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
        >>> splits = [(np.arange(4, 8), np.arange(0, 4)), (np.arange(0, 4), np.arange(4, 8))]
        >>> majority_baseline(y, splits)
        (0.625, [0.25, 1.0])
    """
    tested = np.concatenate([test for _, test in splits])
    common = int(np.argmax(np.bincount(y[tested])))
    per_fold = [float((y[test] == common).mean()) for _, test in splits]
    return float((y[tested] == common).mean()), per_fold


def permutation_p_value(observed: float, null: Sequence[float]) -> float:
    """``(1 + #null >= observed) / (1 + len(null))``; 1.0 for an empty null.

    Examples:
        >>> permutation_p_value(0.9, [0.5, 0.95, 0.9, 0.4])
        0.6
    """
    if not len(null):
        return 1.0
    return (1 + sum(value >= observed - 1e-12 for value in null)) / (1 + len(null))


def shuffle_labels(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` shuffled: whole groups' labels where each group has one label, else single labels.

    Examples:
        >>> import numpy as np
        >>> from mechscope.probing.probe import shuffle_labels
        >>> groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
        >>> one_label_each = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # whole templates swap labels
        >>> shuffle_labels(one_label_each, groups, np.random.default_rng(0)).tolist()
        [1, 1, 0, 0, 0, 0, 1, 1]
        >>> mixed = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # templates of both classes: single labels move
        >>> shuffle_labels(mixed, groups, np.random.default_rng(0)).tolist()
        [0, 0, 1, 0, 1, 0, 1, 1]
    """
    names, inverse = np.unique(groups, return_inverse=True)
    per_group = [np.unique(y[inverse == g]) for g in range(len(names))]
    if all(len(values) == 1 for values in per_group):
        group_labels = np.array([values[0] for values in per_group])
        return np.asarray(rng.permutation(group_labels)[inverse])
    return np.asarray(rng.permutation(y))


def _accuracy(predictions: np.ndarray, y: np.ndarray, splits: Sequence[Split]) -> tuple[float, list[float]]:
    tested = np.concatenate([test for _, test in splits])
    per_fold = [float((predictions[test] == y[test]).mean()) for _, test in splits]
    return float((predictions[tested] == y[tested]).mean()), per_fold


def probe(
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    permutations: int = 100,
    method: ProbeMethod = "logistic",
) -> ProbeScore:
    """Score a linear probe for ``labels`` on ``features`` ``[n, d]``, held out by ``groups`` (template ids).

    `probe_predictions` returns the same score with each example's held-out prediction.

    Examples:
        >>> import numpy as np
        >>> from mechscope.probing.probe import probe
        >>> rng = np.random.default_rng(0)
        >>> features = rng.normal(size=(60, 4))
        >>> features[30:, 0] += 2.5  # the label is written along the first feature
        >>> labels, templates = ["chat"] * 30 + ["tool"] * 30, np.arange(60) // 5
        >>> score = probe(features, labels, templates, permutations=4)  # a real p-value takes more shuffles
        >>> print(score)
        logistic probe: held-out accuracy 0.950 (majority 0.500, control 0.379, selectivity +0.571, p = 0.2;
        5 folds over 12 groups, n = 60)

    Args:
        features: one row per example.
        labels: one label per example (any values; ``diff_means`` needs exactly two).
        groups: one group per example; no group is ever on both sides of a split.
        folds: cross-validation folds (at most the number of groups).
        seed: seed of the fold assignment and of the shuffles.
        permutations: shuffles for the p-value; the control accuracy is their mean (one shuffle is run even
            with 0, for the control).
        method: ``"logistic"`` or ``"diff_means"``.

    Raises:
        InputError: mismatched lengths, non-finite features, fewer than two classes or groups.
    """
    return probe_predictions(
        features, labels, groups, folds=folds, seed=seed, permutations=permutations, method=method
    )[0]


def probe_predictions(
    features: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    permutations: int = 100,
    method: ProbeMethod = "logistic",
) -> tuple[ProbeScore, HeldOut]:
    """`probe`'s score and the held-out evidence behind it (for bootstrap intervals over examples).

    Examples:
        >>> import numpy as np
        >>> from mechscope.probing.probe import probe_predictions
        >>> rng = np.random.default_rng(0)
        >>> features = rng.normal(size=(60, 4))
        >>> features[30:, 0] += 2.5
        >>> labels, templates = ["chat"] * 30 + ["tool"] * 30, np.arange(60) // 5
        >>> score, held_out = probe_predictions(features, labels, templates, permutations=5, method="diff_means")
        >>> round(score.accuracy, 3), round(float((held_out.predictions == held_out.y).mean()), 3), len(held_out.splits)
        (0.967, 0.967, 5)
        >>> rows = np.random.default_rng(1).choice(60, size=60)  # a bootstrap resample of the examples
        >>> 0.5 <= held_out.majority_on(rows) <= 1.0
        True
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be [n, d], got shape {list(x.shape)}")
    if len(labels) != len(x) or len(groups) != len(x):
        raise InputError(f"{len(x)} feature rows, {len(labels)} labels and {len(groups)} groups: give one each")
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or infinity")
    if method not in ("logistic", "diff_means"):
        raise InputError(f"unknown probe method {method!r}; use 'logistic' or 'diff_means'")
    if permutations < 0:
        raise InputError(f"permutations must be >= 0, not {permutations}")
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    if len(classes) < 2:
        raise InputError("a probe needs at least two distinct labels")
    if method == "diff_means" and len(classes) != 2:
        raise InputError(f"the difference-of-means probe takes two classes, not {len(classes)}")
    group_ids = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    splits = template_folds(y, group_ids, folds, seed)
    predictions = heldout_predictions(x, y, splits, method, seed)
    accuracy, per_fold = _accuracy(predictions, y, splits)
    majority, _ = majority_baseline(y, splits)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(max(1, permutations)):
        shuffled = shuffle_labels(y, group_ids, rng)
        null.append(_accuracy(heldout_predictions(x, shuffled, splits, method, seed), shuffled, splits)[0])
    control = float(np.mean(null))
    score = ProbeScore(
        method=method,
        accuracy=accuracy,
        fold_accuracies=per_fold,
        majority=majority,
        control_accuracy=control,
        selectivity=accuracy - control,
        p_value=permutation_p_value(accuracy, null) if permutations else 1.0,
        permutations=permutations,
        folds=len(splits),
        n=len(x),
        n_groups=int(group_ids.max()) + 1,
        n_classes=len(classes),
        seed=seed,
    )
    return score, HeldOut(y=y, predictions=predictions, splits=list(splits), groups=group_ids)


@dataclass(frozen=True)
class HeldOut:
    """The held-out evidence of a probe: class indices ``y``, each example's held-out prediction, the splits.

    `majority_on` rescores the majority baseline on any subset of examples (a bootstrap resample).
    """

    y: np.ndarray
    predictions: np.ndarray
    splits: list[Split]
    groups: np.ndarray

    def majority_on(self, rows: np.ndarray) -> float:
        """The majority baseline on examples ``rows``: the share of their most common class."""
        return float(np.bincount(self.y[rows]).max() / len(rows))
