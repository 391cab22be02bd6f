"""Geometry of labelled activations and direction extraction, checked against independent numpy (issue 19)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mechscope.errors import InputError
from mechscope.probing.direction_results import DirectionMethod, ExtractedDirections
from mechscope.probing.directions import DirectionExtractor, extract_directions
from mechscope.probing.geometry import geometry
from mechscope.probing.geometry_results import GeometryResult

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

METHODS: tuple[DirectionMethod, ...] = ("diff_means", "probe", "lda", "pca")


def _blobs(seed: int = 0, n: int = 60, d: int = 6, shift: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    features = rng.normal(size=(n, d)) + shift * labels[:, None] * rng.normal(size=d) + 2.0
    return features, labels


def _exact_spectrum(variances: list[float], n: int = 40, d: int = 12, seed: int = 0) -> np.ndarray:
    """Data whose centred covariance has exactly ``variances`` (orthonormal centred scores × orthonormal axes)."""
    rng = np.random.default_rng(seed)
    k = len(variances)
    scores = rng.normal(size=(n, k))
    scores -= scores.mean(axis=0)
    scores = np.linalg.qr(scores)[0]  # orthonormal columns, still orthogonal to the ones vector
    axes = np.linalg.qr(rng.normal(size=(d, k)))[0]
    return np.asarray((scores * np.sqrt(variances)) @ axes.T + rng.normal(size=d))


# --------------------------------------------------------------------------------------------- geometry


def test_explained_variance_matches_an_svd_of_the_centred_data() -> None:
    features, labels = _blobs(seed=1, n=50, d=8)
    result = geometry(features, labels, components=5)
    singular = np.linalg.svd(features - features.mean(axis=0), compute_uv=False)
    expected = singular**2 / np.sum(singular**2)
    assert isinstance(result, GeometryResult)
    assert len(result.explained_variance_ratio) == 5
    np.testing.assert_allclose(result.explained_variance_ratio, expected[:5], rtol=1e-8, atol=1e-12)
    assert (result.n, result.d, result.classes, result.class_counts) == (50, 8, ["0", "1"], [25, 25])
    assert len(geometry(features, labels, components=50).explained_variance_ratio) == 8  # min(n, d)


def test_intrinsic_dimension_of_a_known_spectrum() -> None:
    # Shares 0.5, 0.3, 0.12, 0.05, 0.03: cumulative 0.5, 0.8, 0.92, 0.97, 1.0.
    features = _exact_spectrum([50.0, 30.0, 12.0, 5.0, 3.0])
    labels = np.arange(40) % 2
    result = geometry(features, labels, components=3)
    np.testing.assert_allclose(result.explained_variance_ratio, [0.5, 0.3, 0.12], atol=1e-9)
    assert (result.intrinsic_dim_90, result.intrinsic_dim_95) == (3, 4)


def test_three_strong_dimensions_and_tiny_noise_have_intrinsic_dimension_three() -> None:
    rng = np.random.default_rng(2)
    axes = np.linalg.qr(rng.normal(size=(20, 3)))[0]
    features = (rng.normal(size=(80, 3)) * [5.0, 4.0, 3.0]) @ axes.T + 0.01 * rng.normal(size=(80, 20))
    result = geometry(features, np.arange(80) % 2)
    assert result.intrinsic_dim_90 == 3 and result.intrinsic_dim_95 == 3


def test_fisher_ratio_matches_full_scatter_matrices() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(["a", "b", "c"], [10, 15, 20])
    features = rng.normal(size=(45, 5)) + np.repeat(rng.normal(size=(3, 5)) * 2.0, [10, 15, 20], axis=0)
    mean = features.mean(axis=0)
    between, within = np.zeros((5, 5)), np.zeros((5, 5))
    for name in ("a", "b", "c"):
        members = features[labels == name]
        centre = members.mean(axis=0)
        between += len(members) * np.outer(centre - mean, centre - mean)
        for row in members:
            within += np.outer(row - centre, row - centre)
    result = geometry(features, labels)
    assert result.fisher_ratio == pytest.approx(np.trace(between) / np.trace(within), rel=1e-10)
    assert result.classes == ["a", "b", "c"] and result.class_counts == [10, 15, 20]
    assert result.cohens_d is None


def test_silhouette_of_far_blobs_is_near_one_and_of_a_shuffled_blob_near_zero() -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 40)
    far = rng.normal(size=(80, 4)) + 100.0 * labels[:, None]
    assert geometry(far, labels).silhouette > 0.95
    one_blob = rng.normal(size=(80, 4))
    assert abs(geometry(one_blob, rng.permutation(labels)).silhouette) < 0.05


def test_class_mean_cosines_and_cohens_d_by_hand() -> None:
    features, labels = _blobs(seed=5, n=40, d=5)
    result = geometry(features, labels)
    mean0, mean1 = features[labels == 0].mean(axis=0), features[labels == 1].mean(axis=0)
    cosine = mean0 @ mean1 / (np.linalg.norm(mean0) * np.linalg.norm(mean1))
    np.testing.assert_allclose(result.mean_cosine, [[1.0, cosine], [cosine, 1.0]], atol=1e-12)
    unit = (mean1 - mean0) / np.linalg.norm(mean1 - mean0)
    a, b = features[labels == 0] @ unit, features[labels == 1] @ unit
    pooled = np.sqrt((19 * a.var(ddof=1) + 19 * b.var(ddof=1)) / 38)
    assert result.cohens_d == pytest.approx((b.mean() - a.mean()) / pooled, rel=1e-10)


def test_points_are_the_first_two_components_and_sampled_above_the_limit() -> None:
    features, labels = _blobs(seed=6, n=60, d=6)
    full = geometry(features, labels)
    centred = features - features.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2]
    coords = np.array([[p.x, p.y] for p in full.points])
    # Components have no sign of their own: compare up to the sign of each axis.
    np.testing.assert_allclose(np.abs(coords), np.abs(centred @ top.T), atol=1e-9)
    assert [p.label for p in full.points] == [str(v) for v in labels] and not full.points_sampled

    sampled = geometry(features, labels, sample=20, seed=1)
    assert sampled.points_sampled and len(sampled.points) == 20
    assert sampled.fisher_ratio == pytest.approx(full.fisher_ratio)  # statistics use every point
    assert sampled.explained_variance_ratio == pytest.approx(full.explained_variance_ratio)
    again = geometry(features, labels, sample=20, seed=1)
    assert again.points == sampled.points and again.silhouette == sampled.silhouette


def test_numeric_labels_sort_as_numbers_and_summary_names_the_layer() -> None:
    features, labels = _blobs(seed=7, n=40, d=4)
    result = geometry(features, np.where(labels == 1, 10, 2))
    assert result.classes == ["2", "10"]
    result.layer, result.site = 4, "resid_post"
    assert result.summary().startswith("resid_post layer 4: n = 40, d = 4, 2 classes")
    assert GeometryResult.model_validate_json(result.model_dump_json()) == result


def test_umap_without_the_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail even where it is installed
    features, labels = _blobs(n=20, d=4)
    with pytest.raises(InputError, match=r"pip install 'mechscope\[umap\]'"):
        geometry(features, labels, projection="umap")


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros(6), [0, 1, 0, 1, 0, 1], "must be"),
        (np.ones((6, 2)), [0, 1, 0], "give one label per row"),
        (np.array([[np.nan, 0.0]] + [[1.0, 2.0]] * 5), [0, 1, 0, 1, 0, 1], "NaN"),
        (np.arange(12.0).reshape(6, 2), [1] * 6, "at least two classes"),
        (np.arange(12.0).reshape(6, 2), [0, 0, 0, 1, 1, 2], "single example"),
        (np.ones((6, 2)), [0, 1, 0, 1, 0, 1], "no variance"),
    ],
)
def test_geometry_rejects_bad_input(features: np.ndarray, labels: list[int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        geometry(features, labels)


# ------------------------------------------------------------------------------------------- directions


def _planted(seed: int = 0, n: int = 400, d: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x = noise + 3 u label`` for a random unit ``u``; groups of 10 examples, each of one label."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    labels = np.repeat([0, 1], n // 2)
    features = rng.normal(size=(n, d)) + 3.0 * labels[:, None] * u
    return features, labels, u, np.arange(n) // 10


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_a_planted_direction(method: DirectionMethod) -> None:
    features, labels, u, groups = _planted()
    result, vectors = extract_directions(features, labels, groups=groups, method=method)
    assert isinstance(result, ExtractedDirections) and result.method == method
    vector = vectors["label"]
    assert vector.dtype == np.float32 and vector.shape == (32,)
    # The unregularised-ish logistic probe (C = 1) is the noisiest estimator at n / d = 12.5: measured cosines
    # 0.88-0.94 over seeds 0-4 (diff-of-means 0.98), so it gets a looser bound.
    assert float(vector @ u / np.linalg.norm(vector)) > (0.85 if method == "probe" else 0.9)
    item = result.item("label")
    assert item.held_out and item.folds == 5 and item.auc > 0.95 and item.accuracy > 0.85
    assert (item.positive, item.negative, item.n_positive, item.n_negative) == ("label 1", "label 0", 200, 200)
    assert item.norm == pytest.approx(float(np.linalg.norm(vector.astype(np.float64))), rel=1e-5)
    # Orientation: the positive class projects higher, for every method.
    projections = features @ vector
    assert projections[labels == 1].mean() > projections[labels == 0].mean()
    assert item.cohens_d > 2.0
    diff = features[labels == 1].mean(axis=0) - features[labels == 0].mean(axis=0)
    cosine = float(vector @ diff / (np.linalg.norm(vector) * np.linalg.norm(diff)))
    assert item.cosine_to_diff_means == pytest.approx(1.0 if method == "diff_means" else cosine, abs=1e-5)


def test_diff_means_is_the_difference_of_class_means_and_probe_lives_in_raw_space() -> None:
    features, labels, _, _ = _planted(seed=1, n=100, d=8)
    features = features * np.array([1.0, 10.0, 0.1, 1, 1, 1, 1, 1])  # unequal scales: raw space matters
    _, vectors = extract_directions(features, labels)
    diff = features[labels == 1].mean(axis=0) - features[labels == 0].mean(axis=0)
    np.testing.assert_allclose(vectors["label"], diff, rtol=1e-5)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(features), labels)
    _, probed = extract_directions(features, labels, method="probe")
    # The raw-space weights give the scaled model's logits up to a constant (the intercept and the centring).
    logits = model.decision_function(scaler.transform(features))
    assert np.ptp(features @ probed["label"].astype(np.float64) - logits) < 1e-3


def test_random_labels_score_near_chance_held_out() -> None:
    rng = np.random.default_rng(8)
    features = rng.normal(size=(400, 32))
    groups = np.arange(400) // 10
    labels = np.repeat(rng.permutation(np.repeat([0, 1], 20)), 10)  # whole groups share a random label
    for method in ("diff_means", "lda"):
        item = extract_directions(features, labels, groups=groups, method=method)[0].item("label")
        assert item.held_out and abs(item.auc - 0.5) < 0.12
    in_sample = extract_directions(features, labels)[0].item("label")
    assert not in_sample.held_out and in_sample.folds == 0 and in_sample.auc > 0.5  # fits the noise


@pytest.mark.parametrize("method", ["diff_means", "probe", "lda"])
def test_sub_label_directions_recover_each_offset(method: DirectionMethod) -> None:
    rng = np.random.default_rng(9)
    d, tools, per_tool = 32, ["calc", "search", "weather", "mail"], 50
    axes = np.linalg.qr(rng.normal(size=(d, len(tools))))[0].T
    offsets = 3.0 * (axes - axes.mean(axis=0))  # summing to zero: "this tool vs the rest" points at its offset
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    negatives = rng.normal(size=(200, d))
    positives = np.concatenate([rng.normal(size=(per_tool, d)) + 3.0 * u + offset for offset in offsets])
    features = np.concatenate([negatives, positives])
    labels = np.repeat([0, 1], 200)
    sub_labels = [""] * 200 + [tool for tool in tools for _ in range(per_tool)]
    sub_labels[-1] = "rare"  # one example: skipped, with the reason
    groups = np.arange(400) // 10
    result, vectors = DirectionExtractor(method).fit(features, labels, sub_labels, groups, sub_label_name="tool")
    assert [item.name for item in result.items] == ["label", "calc", "mail", "search", "weather"]
    assert set(vectors) == {"label", *tools}
    assert "rare" in result.skipped and "at least two" in result.skipped["rare"]
    with pytest.raises(KeyError, match="skipped"):
        result.item("rare")
    for tool, offset in zip(tools, offsets, strict=True):
        vector = vectors[tool].astype(np.float64)
        assert vector @ offset / (np.linalg.norm(vector) * np.linalg.norm(offset)) > 0.8, tool
        item = result.item(tool)
        assert (item.positive, item.negative) == (f"tool={tool}", "other tools")
        assert item.n_positive == per_tool - (tool == "mail") and item.n_negative == 200 - item.n_positive
        assert item.held_out and item.auc > 0.9
    assert "skipped rare" in result.summary()


def test_without_enough_groups_the_scores_are_in_sample() -> None:
    features, labels, _, _ = _planted(seed=2, n=40, d=4)
    groups = np.where(labels == 1, "g1", "g0")  # one group per class: no grouped split is possible
    item = extract_directions(features, labels, groups=groups)[0].item("label")
    assert not item.held_out and item.folds == 0


@pytest.mark.parametrize(
    ("labels", "sub_labels", "groups", "features", "message"),
    [
        ([0, 1, 2] * 4, None, None, np.ones((12, 3)), "0 and 1"),
        ([0, 1] * 6, None, None, np.ones((11, 3)), "give one per row"),
        ([0, 1] * 6, ["a"] * 5, None, np.ones((12, 3)), "sub_labels"),
        ([0, 1] * 6, None, [1, 2], np.ones((12, 3)), "groups"),
        ([0, 1] * 6, None, None, np.full((12, 3), np.nan), "NaN"),
        ([0] * 11 + [1], None, None, np.arange(36.0).reshape(12, 3), "at least two"),
        ([0, 1] * 6, ["label"] * 12, None, np.arange(36.0).reshape(12, 3), "rename"),
    ],
)
def test_extract_directions_rejects_bad_input(
    labels: list[int], sub_labels: list[str] | None, groups: list[int] | None, features: np.ndarray, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        extract_directions(features, labels, sub_labels, groups)


def test_unknown_methods_are_rejected() -> None:
    with pytest.raises(InputError, match="unknown direction method"):
        DirectionExtractor("svm")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown direction method"):
        extract_directions(np.ones((4, 2)), [0, 0, 1, 1], method="svm")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown projection"):
        geometry(np.eye(4), [0, 0, 1, 1], projection="tsne")  # type: ignore[arg-type]
