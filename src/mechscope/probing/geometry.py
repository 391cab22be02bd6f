"""The geometry of labelled activations: how many directions they use, a 2-D map, how far apart the classes lie.

`geometry` takes features ``[n, d]`` (one row per example, e.g. the residual stream at one layer) and a
label per example, and measures:

* the **spectrum**: PCA's explained-variance ratios, and the **intrinsic dimension**, the fewest principal
  components explaining 90% / 95% of the variance (from the full spectrum, not only the components kept);
* a **2-D map** of the examples: the first two principal components, or UMAP (``pip install
  'mechscope[umap]'``). Above ``sample`` examples a seeded random subset is mapped;
* **class separation**: the Fisher ratio ``trace(S_between) / trace(S_within)``, the silhouette score, the
  cosine similarity of the class means and, for two classes, Cohen's d along the difference of the means.

Every statistic but the map and the silhouette (which costs ``O(n²)``) uses all examples. scikit-learn is
imported when `geometry` runs.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([0, 1], 50)
>>> features = rng.normal(size=(100, 8)) + 4.0 * labels[:, None] * np.eye(8)[0]
>>> result = geometry(features, labels, components=3)
>>> result.classes, result.class_counts, len(result.points), result.points_sampled
(['0', '1'], [50, 50], 100, False)
>>> round(result.explained_variance_ratio[0], 2), round(result.silhouette, 2), round(result.cohens_d, 1)
(0.4, 0.28, 4.5)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mechscope.errors import InputError
from mechscope.probing.geometry_results import GeometryResult, Point

Projection = Literal["pca", "umap"]


def class_names(labels: Sequence[Any] | np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sorted class names (as strings) and each example's class index.

    Integer labels sort as numbers (``2`` before ``10``), anything else as strings.

    Examples:
        >>> class_names([10, 2, 2])
        (['2', '10'], array([1, 0, 0]))
    """
    values = list(np.asarray(labels).tolist())
    numeric = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    distinct = sorted(set(values), key=int) if numeric else sorted({str(v) for v in values})
    names = [str(v) for v in distinct]
    index = {name: i for i, name in enumerate(names)}
    return names, np.asarray([index[str(v)] for v in values], dtype=np.int64)


def intrinsic_dimension(ratios: np.ndarray, share: float) -> int:
    """The fewest leading components whose explained-variance ratios sum to at least ``share``.

    Examples:
        >>> intrinsic_dimension(np.array([0.5, 0.3, 0.12, 0.05, 0.03]), 0.9)
        3
    """
    cumulative = np.cumsum(ratios)
    # The tolerance keeps rounding (a full spectrum summing to 0.9999999) from asking for one more component.
    return min(int(np.searchsorted(cumulative, share - 1e-9)) + 1, len(ratios))


def fisher_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """``trace(S_between) / trace(S_within)`` for class indices ``y``, without forming ``d × d`` matrices.

    ``trace(S_between) = Σ_c n_c |μ_c − μ|²`` and ``trace(S_within) = Σ_c Σ_{i∈c} |x_i − μ_c|²``; infinite when
    the classes differ but every class is a single point.

    Examples:
        >>> fisher_ratio(np.array([[0.0], [2.0], [10.0], [12.0]]), np.array([0, 0, 1, 1]))
        25.0
    """
    mean = x.mean(axis=0)
    between = within = 0.0
    for c in range(int(y.max()) + 1):
        members = x[y == c]
        centre = members.mean(axis=0)
        between += len(members) * float(np.sum((centre - mean) ** 2))
        within += float(np.sum((members - centre) ** 2))
    if within == 0.0:
        return float("inf") if between > 0.0 else 0.0
    return between / within


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """``(mean(b) − mean(a)) / pooled standard deviation`` of two 1-D samples (each of at least two values).

    The pooled variance is ``((n_a − 1) var_a + (n_b − 1) var_b) / (n_a + n_b − 2)``. With no spread at all it
    is infinite when the means differ and 0 when they do not.

    Examples:
        >>> round(cohens_d(np.array([0.0, 2.0]), np.array([4.0, 6.0])), 4)        # 4 / sqrt(2)
        2.8284
    """
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    difference = float(b.mean() - a.mean())
    if pooled <= 0.0:
        return 0.0 if difference == 0.0 else float(np.copysign(np.inf, difference))
    return difference / float(np.sqrt(pooled))


def mean_cosines(means: np.ndarray) -> list[list[float]]:
    """The cosine similarity of every pair of rows of ``means``; 0 where a row is the zero vector.

    Examples:
        >>> import numpy as np
        >>> from mechscope.probing.geometry import mean_cosines
        >>> means = np.array([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0], [0.0, 0.0]])
        >>> [[round(value, 3) for value in row] for row in mean_cosines(means)]
        [[1.0, 0.707, -1.0, 0.0], [0.707, 1.0, -0.707, 0.0], [-1.0, -0.707, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    norms = np.linalg.norm(means, axis=1)
    safe = np.where(norms > 0.0, norms, 1.0)
    unit = means / safe[:, None]
    cosines = np.clip(unit @ unit.T, -1.0, 1.0)
    return [[float(v) for v in row] for row in cosines]


def _validate(
    features: np.ndarray, labels: Sequence[Any] | np.ndarray, components: int, sample: int | None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be [n, d], got shape {list(x.shape)}")
    if len(labels) != len(x):
        raise InputError(f"{len(x)} feature rows and {len(labels)} labels: give one label per row")
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or infinity; drop or fix those rows first")
    if components < 1:
        raise InputError(f"components must be at least 1, not {components}")
    if sample is not None and sample < 3:
        raise InputError(f"sample must be at least 3 (or None for every point), not {sample}")
    names, y = class_names(labels)
    if len(names) < 2:
        found = f"every label is {names[0]!r}" if names else "there are no examples"
        raise InputError(f"class separation needs at least two classes; {found}")
    counts = np.bincount(y, minlength=len(names))
    single = [name for name, count in zip(names, counts, strict=True) if count < 2]
    if single:
        # The within-class spread (Cohen's d, the silhouette) of a single example is undefined.
        raise InputError(f"class {single[0]!r} has a single example; give every class at least two (or drop it)")
    if len(names) > len(x) - 1:
        raise InputError(f"the silhouette needs fewer classes than examples: {len(names)} classes, {len(x)} rows")
    if float(np.ptp(x, axis=0).max()) == 0.0:
        raise InputError("features have no variance: every row is the same")
    return x, names, y


def _map(x: np.ndarray, pcs: np.ndarray, rows: np.ndarray, projection: Projection, seed: int) -> np.ndarray:
    """The 2-D coordinates of ``rows``: the first two principal components, or UMAP fitted on those rows."""
    if projection == "pca":
        # A spectrum of one component (d = 1) maps every point onto the x axis.
        coords = np.zeros((len(rows), 2))
        coords[:, : min(2, pcs.shape[1])] = pcs[rows, :2]
        return coords
    try:
        # importlib, not `import umap`: umap-learn is an optional extra without type information.
        umap: Any = importlib.import_module("umap")
    except ImportError:
        raise InputError("UMAP needs the umap extra: pip install 'mechscope[umap]'") from None
    reducer = umap.UMAP(n_components=2, random_state=seed)
    return np.asarray(reducer.fit_transform(x[rows]), dtype=np.float64)


def geometry(
    features: np.ndarray,
    labels: Sequence[int | str] | np.ndarray,
    *,
    components: int = 10,
    projection: Projection = "pca",
    seed: int = 0,
    sample: int | None = 2000,
) -> GeometryResult:
    """Measure the spectrum, a 2-D map and the class separation of labelled features ``[n, d]``.

    Args:
        features: one row per example.
        labels: one class per example (integers sort as numbers; the result names classes as strings).
        components: how many explained-variance ratios to report (at most ``min(n, d)``); the intrinsic
            dimension always uses the full spectrum.
        projection: ``"pca"`` (the first two principal components) or ``"umap"`` (needs the umap extra).
        seed: seed of the sample and of UMAP.
        sample: the most points to map and to score the silhouette on (a seeded random subset above it);
            None maps every point.

    Examples:
        Two classes apart along two of six directions; 40 of the 60 points are mapped:

        >>> import numpy as np
        >>> from mechscope.probing.geometry import geometry
        >>> rng = np.random.default_rng(0)
        >>> features = rng.normal(size=(60, 6))
        >>> features[30:, :2] += 3.0
        >>> result = geometry(features, ["chat"] * 30 + ["tool"] * 30, components=3, sample=40)
        >>> result.classes, result.class_counts, result.n, result.d, len(result.points), result.points_sampled
        (['chat', 'tool'], [30, 30], 60, 6, 40, True)
        >>> [round(ratio, 2) for ratio in result.explained_variance_ratio], result.intrinsic_dim_90
        ([0.55, 0.15, 0.11], 5)
        >>> round(result.fisher_ratio, 2), round(result.silhouette, 2), round(result.cohens_d, 2)
        (0.83, 0.38, 4.34)
        >>> round(result.mean_cosine[0][1], 2), result.points[0].label
        (0.38, 'chat')

    Returns:
        A `GeometryResult`; its ``site`` and ``layer`` are left for the caller to fill.

    Raises:
        InputError: features not ``[n, d]`` or not finite, a label count that is not ``n``, fewer than two
            classes, a class of a single example, no variance, a sample without two classes, or UMAP asked
            for without the umap extra.
    """
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    if projection not in ("pca", "umap"):
        raise InputError(f"unknown projection {projection!r}; use 'pca' or 'umap'")
    x, names, y = _validate(features, labels, components, sample)
    n, d = x.shape
    full = min(n, d)
    # One full fit gives both the reported ratios (its leading ones) and the spectrum for the intrinsic dimension.
    pca = PCA(n_components=full, svd_solver="full")
    pcs = pca.fit_transform(x)
    ratios = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)

    rows = np.arange(n)
    sampled = sample is not None and n > sample
    if sampled:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        present = len(np.unique(y[rows]))
        if present < 2 or present > len(rows) - 1:
            raise InputError(f"the sample of {len(rows)} points holds {present} classes; raise sample or use None")
    silhouette = float(silhouette_score(x[rows], y[rows], metric="euclidean"))
    coords = _map(x, pcs, rows, projection, seed)

    means = np.stack([x[y == c].mean(axis=0) for c in range(len(names))])
    d_value = None
    if len(names) == 2:
        difference = means[1] - means[0]
        norm = float(np.linalg.norm(difference))
        along = x @ (difference / norm) if norm > 0.0 else np.zeros(n)
        d_value = cohens_d(along[y == 0], along[y == 1])

    return GeometryResult(
        explained_variance_ratio=[float(v) for v in ratios[: min(components, full)]],
        intrinsic_dim_90=intrinsic_dimension(ratios, 0.90),
        intrinsic_dim_95=intrinsic_dimension(ratios, 0.95),
        n=n,
        d=d,
        classes=names,
        class_counts=[int(c) for c in np.bincount(y, minlength=len(names))],
        fisher_ratio=fisher_ratio(x, y),
        silhouette=silhouette,
        mean_cosine=mean_cosines(means),
        cohens_d=d_value,
        projection=projection,
        points=[Point(x=float(px), y=float(py), label=names[y[i]]) for i, (px, py) in zip(rows, coords, strict=True)],
        points_sampled=sampled,
    )
