"""Directions in activation space read from labelled examples, each scored by how well it separates them.

`extract_directions` fits one direction for a binary label (0/1) and, given sub-labels, one per sub-label
*among the examples labelled 1* against the other sub-labels there (for tool-call prompts: one direction per
tool, "this tool vs the other tools"). Four ways to fit a direction, each returning a vector in the original
(unscaled) feature space, oriented so that the positive side projects higher:

* ``diff_means``: ``mean(positive) - mean(negative)``;
* ``probe``: the weights of a logistic regression on standardised features, mapped back to raw space
  (``w / scale``: the logit of a standardised input is ``Σ w_j (x_j - m_j) / s_j + b``);
* ``lda``: the coefficients of a shrinkage LDA (``solver="lsqr", shrinkage="auto"``), already in raw space;
* ``pca``: the first principal component of the examples (unsupervised: it finds the label only where the
  label dominates the variance), its sign set by the class means.

A direction is scored by projecting the examples onto it: ROC AUC, Cohen's d and the accuracy of the
midpoint threshold. Where groups (templates) are given with at least two per side, the scores are held out:
each example is projected onto a direction (and compared with a threshold) fitted on the other folds of a
stratified grouped k-fold, so a direction that only memorised its templates scores near chance. The vectors
returned are fitted on every example; they are not rescaled (callers scale them for steering).

scikit-learn is imported when a direction is fitted.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([0, 1], 40)
>>> features = rng.normal(size=(80, 6)) + 3.0 * labels[:, None] * np.eye(6)[2]
>>> result, vectors = extract_directions(features, labels, groups=np.arange(80) // 5)
>>> item = result.item("label")
>>> item.held_out, item.auc > 0.95, int(np.argmax(vectors["label"])), vectors["label"].dtype
(True, True, 2, dtype('float32'))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mechscope.errors import InputError
from mechscope.probing.direction_results import DirectionMethod, ExtractedDirection, ExtractedDirections
from mechscope.probing.geometry import cohens_d
from mechscope.probing.probe import template_folds

METHODS: tuple[DirectionMethod, ...] = ("diff_means", "probe", "lda", "pca")
#: At most this many folds of the grouped k-fold.
FOLDS = 5


def fit_direction(x: np.ndarray, y: np.ndarray, method: DirectionMethod, seed: int = 0) -> np.ndarray:
    """The raw-space direction of ``method`` separating ``y == 1`` from ``y == 0``, positive side higher.

    >>> fit_direction(np.array([[0.0, 1.0], [0.0, 3.0], [2.0, 1.0], [2.0, 3.0]]), np.array([0, 0, 1, 1]),
    ...     "diff_means").tolist()
    [2.0, 0.0]
    """
    difference = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
    if method == "diff_means":
        vector = difference
    elif method == "probe":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # near-separable folds; the direction is kept
            model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(scaler.transform(x), y)
        vector = model.coef_[0] / scaler.scale_
    elif method == "lda":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        vector = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y).coef_[0]
    elif method == "pca":
        from sklearn.decomposition import PCA

        vector = PCA(n_components=1, svd_solver="full").fit(x).components_[0]
    else:
        raise InputError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
    vector = np.asarray(vector, dtype=np.float64)
    # A principal component has no sign of its own; for the supervised methods this only guards the contract.
    return -vector if float(vector @ difference) < 0.0 else vector


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.clip(a @ b / norms, -1.0, 1.0)) if norms > 0.0 else 0.0


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0.0 else vector


def _midpoint(projections: np.ndarray, y: np.ndarray) -> float:
    """The threshold halfway between the two classes' mean projections."""
    return float((projections[y == 0].mean() + projections[y == 1].mean()) / 2.0)


def _heldout_scores(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, method: DirectionMethod, seed: int
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Each tested example's projection minus the threshold, both fitted on the other folds; None if unscorable.

    Returns the scores, the tested examples' classes and the number of folds used.
    """
    scores = np.full(len(y), np.nan)
    folds = 0
    for train, test in template_folds(y, groups, FOLDS, seed):
        if len(np.unique(y[train])) < 2:
            continue  # a fold whose training side lacks a class fits no direction
        unit = _unit(fit_direction(x[train], y[train], method, seed))
        # The threshold is the training folds' midpoint, so the held-out accuracy is honest too; unit vectors
        # and per-fold thresholds put the folds' scores on one scale, so they can be pooled into one AUC.
        scores[test] = x[test] @ unit - _midpoint(x[train] @ unit, y[train])
        folds += 1
    tested = ~np.isnan(scores)
    if folds == 0 or min(int((y[tested] == 0).sum()), int((y[tested] == 1).sum())) < 2:
        return None
    return scores[tested], y[tested], folds


def _score(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, method: DirectionMethod, vector: np.ndarray, seed: int
) -> dict[str, Any]:
    """AUC, Cohen's d and midpoint accuracy of the projections: held out by group where the groups allow."""
    from sklearn.metrics import roc_auc_score

    heldout = None
    if groups is not None and min(len(np.unique(groups[y == c])) for c in (0, 1)) >= 2:
        heldout = _heldout_scores(x, y, groups, method, seed)
    if heldout is None:
        projections = x @ _unit(vector)
        scores, truth, folds = projections - _midpoint(projections, y), y, 0
    else:
        scores, truth, folds = heldout
    return {
        "auc": float(roc_auc_score(truth, scores)),
        "cohens_d": cohens_d(scores[truth == 0], scores[truth == 1]),
        "accuracy": float(((scores > 0.0).astype(np.int64) == truth).mean()),
        "held_out": heldout is not None,
        "folds": folds,
    }


def _direction(
    name: str,
    sides: tuple[str, str],
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    method: DirectionMethod,
    seed: int,
) -> tuple[ExtractedDirection, np.ndarray]:
    vector = fit_direction(x, y, method, seed)
    difference = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
    item = ExtractedDirection(
        name=name,
        positive=sides[0],
        negative=sides[1],
        n_positive=int((y == 1).sum()),
        n_negative=int((y == 0).sum()),
        norm=float(np.linalg.norm(vector)),
        cosine_to_diff_means=1.0 if method == "diff_means" else _cosine(vector, difference),
        **_score(x, y, groups, method, vector, seed),
    )
    return item, vector.astype(np.float32)


def _validate(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    sub_labels: Sequence[str] | np.ndarray | None,
    groups: Sequence[Any] | np.ndarray | None,
    method: str,
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be [n, d], got shape {list(x.shape)}")
    for what, values in (("labels", labels), ("sub_labels", sub_labels), ("groups", groups)):
        if values is not None and len(values) != len(x):
            raise InputError(f"{len(x)} feature rows and {len(values)} {what}: give one per row")
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or infinity; drop or fix those rows first")
    if method not in METHODS:
        raise InputError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
    distinct = sorted({str(v) for v in np.asarray(labels).tolist()})
    if set(np.asarray(labels).tolist()) != {0, 1}:
        raise InputError(f"the binary label takes the values 0 and 1, both present; got {distinct[:6]}")
    y = np.asarray(labels).astype(np.int64)
    if min(int((y == 0).sum()), int((y == 1).sum())) < 2:
        raise InputError("a direction needs at least two examples labelled 0 and two labelled 1")
    return x, y


def extract_directions(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    sub_labels: Sequence[str] | np.ndarray | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    *,
    method: DirectionMethod = "diff_means",
    seed: int = 0,
    sub_label_name: str = "sub_label",
) -> tuple[ExtractedDirections, dict[str, np.ndarray]]:
    """Fit and score the binary label's direction and, given ``sub_labels``, one per sub-label among label 1.

    Examples:
        Tool calls (label 1) and chit-chat (0), the tool as sub-label: feature 0 carries the label, features 1
        and 2 the weather and email tools; "time" has a single example, too few for a direction of its own:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([0, 1], 30)
        >>> tools = np.array(["chat"] * 30 + ["weather"] * 14 + ["email"] * 15 + ["time"])
        >>> x = rng.normal(size=(60, 4)) + 3.0 * np.stack(
        ...     [labels, tools == "weather", tools == "email", np.zeros(60)], axis=1)
        >>> result, vectors = extract_directions(x, labels, tools, method="probe", sub_label_name="tool")
        >>> [(item.name, item.positive, item.negative, round(item.auc, 2)) for item in result.items]
        [('label', 'label 1', 'label 0', 0.99), ('email', 'tool=email', 'other tools', 1.0),
         ('weather', 'tool=weather', 'other tools', 1.0)]
        >>> {name: int(np.argmax(vector)) for name, vector in vectors.items()}
        {'label': 0, 'email': 2, 'weather': 1}
        >>> result.skipped["time"]
        '1 example(s) of tool=time and 29 of other tools among label 1; a direction needs at least two on each side'

    Args:
        features: one row per example ``[n, d]``.
        labels: 0 or 1 per example, both present (at least two of each).
        sub_labels: one per example; only the examples labelled 1 are read. Each distinct value there gets a
            direction "this sub-label vs the other sub-labels (of label 1)"; one with fewer than two examples
            on either side is skipped, with the reason.
        groups: one group (template) per example; where each side has at least two groups, the scores are
            held out by group (stratified grouped k-fold, up to 5 folds), else in-sample.
        method: ``"diff_means"``, ``"probe"``, ``"lda"`` or ``"pca"`` (see the module).
        seed: seed of the folds and of the logistic regression.
        sub_label_name: what a sub-label is, for the sides' descriptions (``"tool"``: ``"tool=weather"`` vs
            ``"other tools"``).

    Returns:
        The scores (an `ExtractedDirections`; ``site`` and ``layer`` left for the caller) and each direction's
        raw-space vector (float32, ``[d]``, not unit-normed) by name: ``"label"``, then the sub-labels.

    Raises:
        InputError: features not ``[n, d]`` or not finite, lengths that differ from ``n``, labels other than
            0 and 1 (or fewer than two of either), an unknown method, or a sub-label called ``"label"``.
    """
    x, y = _validate(features, labels, sub_labels, groups, method)
    group_ids = None if groups is None else np.unique([str(g) for g in groups], return_inverse=True)[1]
    item, vector = _direction("label", ("label 1", "label 0"), x, y, group_ids, method, seed)
    items, vectors = [item], {"label": vector}
    skipped: dict[str, str] = {}
    if sub_labels is not None:
        rows = np.flatnonzero(y == 1)
        subs = np.asarray([str(s) for s in np.asarray(sub_labels).tolist()])[rows]
        for name in sorted(set(subs.tolist())):
            if name == "label":
                raise InputError("a sub-label is called 'label', the name of the main direction; rename it")
            inside = (subs == name).astype(np.int64)
            n_pos, n_neg = int(inside.sum()), int(len(inside) - inside.sum())
            if min(n_pos, n_neg) < 2:
                skipped[name] = (
                    f"{n_pos} example(s) of {sub_label_name}={name} and {n_neg} of other {sub_label_name}s "
                    "among label 1; a direction needs at least two on each side"
                )
                continue
            sides = (f"{sub_label_name}={name}", f"other {sub_label_name}s")
            sub_groups = None if group_ids is None else group_ids[rows]
            item, vector = _direction(name, sides, x[rows], inside, sub_groups, method, seed)
            items.append(item)
            vectors[name] = vector
    return ExtractedDirections(method=method, items=items, skipped=skipped), vectors


class DirectionExtractor:
    """`extract_directions` with its method and seed fixed once.

    >>> import numpy as np
    >>> x = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0], [4.0, 1.0]])
    >>> result, vectors = DirectionExtractor("lda").fit(x, [0, 0, 1, 1])
    >>> result.method, result.item("label").held_out, bool(vectors["label"][0] > 0)
    ('lda', False, True)
    """

    def __init__(self, method: DirectionMethod = "diff_means", seed: int = 0) -> None:
        if method not in METHODS:
            raise InputError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
        self.method: DirectionMethod = method
        self.seed = seed

    def fit(
        self,
        features: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        sub_labels: Sequence[str] | np.ndarray | None = None,
        groups: Sequence[Any] | np.ndarray | None = None,
        *,
        sub_label_name: str = "sub_label",
    ) -> tuple[ExtractedDirections, dict[str, np.ndarray]]:
        """Fit and score the directions (see `extract_directions`)."""
        return extract_directions(
            features,
            labels,
            sub_labels,
            groups,
            method=self.method,
            seed=self.seed,
            sub_label_name=sub_label_name,
        )
