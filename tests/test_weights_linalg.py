"""The shared linear algebra of the weight tools against numpy, and stats and diff agreeing through it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechscope.weights.diff import tensor_diff
from mechscope.weights.diff_results import WeightDiff
from mechscope.weights.linalg import (
    FLOAT32_EPS,
    FLOAT64_SVD_MAX_ELEMENTS,
    as_matrices,
    default_rtol,
    effective_rank,
    exact_rank,
    matrix_dims,
    singular_values,
    stable_rank,
    svd_dtype,
    vector_rank,
)
from mechscope.weights.stats import StatsOptions, tensor_stats


def _random_matrices() -> list[np.ndarray]:
    """Float32 matrices: full-rank random ones (tall, wide, square) and planted low-rank ones."""
    rng = np.random.default_rng(0)
    full = [rng.standard_normal(shape).astype(np.float32) for shape in ((17, 9), (9, 17), (12, 12), (1, 7))]
    low = [
        (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(np.float32)
        for m, n, r in ((40, 30, 3), (25, 60, 1), (33, 33, 10))
    ]
    return [*full, *low, np.zeros((4, 5), dtype=np.float32)]


def test_float32_eps_and_default_rtol_are_numpys() -> None:
    assert float(np.finfo(np.float32).eps) == FLOAT32_EPS
    assert default_rtol(40, 30) == 40 * np.finfo(np.float32).eps


@pytest.mark.parametrize("index", range(len(_random_matrices())))
def test_singular_values_and_rank_match_numpy(index: int) -> None:
    array = _random_matrices()[index]
    rows, cols = array.shape
    s = singular_values(torch.from_numpy(array)[None])[0]
    expected = np.linalg.svd(array.astype(np.float64), compute_uv=False)
    assert s.dtype == torch.float64
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-9, atol=1e-12 * max(1.0, float(expected[0])))
    assert int(exact_rank(s, rows, cols)) == np.linalg.matrix_rank(array)
    # An explicit rtol follows numpy's rtol argument.
    assert int(exact_rank(s, rows, cols, 1e-3)) == np.linalg.matrix_rank(array, rtol=1e-3)


def test_planted_rank_and_tolerance() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 20))
    noisy = (base + 1e-4 * np.outer(rng.standard_normal(30), rng.standard_normal(20))).astype(np.float32)
    s = singular_values(torch.from_numpy(noisy)[None])[0]
    assert int(exact_rank(s, 30, 20)) == np.linalg.matrix_rank(noisy) == 4
    assert int(exact_rank(s, 30, 20, 1e-3)) == np.linalg.matrix_rank(noisy, rtol=1e-3) == 3


def test_effective_and_stable_rank_from_numpy_singular_values() -> None:
    for array in _random_matrices()[:-1]:
        expected = np.linalg.svd(array.astype(np.float64), compute_uv=False)
        s = singular_values(torch.from_numpy(array)[None])[0]
        positive = expected[expected > 0]
        p = positive / positive.sum()
        assert effective_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
        assert stable_rank(s) == pytest.approx((expected**2).sum() / expected[0] ** 2, rel=1e-9)
    zero = torch.zeros(4, dtype=torch.float64)
    assert effective_rank(zero) == 0.0 and math.isnan(stable_rank(zero))


def test_stacks_are_decomposed_matrix_by_matrix() -> None:
    rng = np.random.default_rng(2)
    stack = np.stack([rng.standard_normal((6, 2)) @ rng.standard_normal((2, 5)), rng.standard_normal((6, 5))])
    stack = stack.astype(np.float32)
    s = singular_values(as_matrices(torch.from_numpy(stack)))
    assert exact_rank(s, 6, 5).tolist() == list(np.linalg.matrix_rank(stack)) == [2, 5]
    expected = np.linalg.svd(stack.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-9, atol=1e-12 * float(expected.max()))


def test_matrix_view_and_precision_policy() -> None:
    assert matrix_dims(()) == (1, 1) and matrix_dims((7,)) == (7, 1)
    assert matrix_dims((3, 4)) == (3, 4) and matrix_dims((8, 3, 4)) == (3, 4)
    assert tuple(as_matrices(torch.zeros(7)).shape) == (1, 7, 1)
    assert svd_dtype(1024, 1024) == torch.float64 and FLOAT64_SVD_MAX_ELEMENTS == 1024 * 1024
    assert svd_dtype(1024, 1025) == torch.float32
    assert vector_rank(torch.zeros(5)) == 0 and vector_rank(torch.tensor([0.0, -1e-30])) == 1
    assert vector_rank(torch.tensor(3.0)) == 1
    # numpy's rule for vectors: rank 1 if any element is non-zero.
    assert vector_rank(torch.tensor([0.0, 2.0])) == np.linalg.matrix_rank(np.array([0.0, 2.0]))


@pytest.mark.parametrize("changed", [True, False])
def test_stats_and_diff_agree_on_a_1d_tensor(changed: bool) -> None:
    base = torch.randn(6, generator=torch.Generator().manual_seed(3))
    tuned = base + torch.linspace(-1.0, 1.0, 6) if changed else base.clone()
    diff = tensor_diff("model.layers.0.input_layernorm.weight", base, tuned)
    row = WeightDiff.build([diff], base="a", finetuned="b", top_k=5, rank_rtol=None, created_at="t").rows()[0]
    stats = tensor_stats(tuned - base, StatsOptions(spectral=True))
    assert (row["rows"], row["cols"]) == (stats.rows, stats.cols) == (6, 1)  # an n x 1 column in both
    assert diff.rank == stats.rank == int(changed)
    assert stats.spectral is not None
    if changed:
        assert diff.effective_rank == stats.spectral.effective_rank == 1.0
    else:
        assert diff.effective_rank == 0.0 and math.isnan(stats.spectral.effective_rank)


def test_stats_and_diff_agree_on_matrices() -> None:
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(20, 12, generator=generator)
    update = torch.randn(20, 2, generator=generator) @ torch.randn(2, 12, generator=generator)
    diff = tensor_diff("w", base, base + update, top_k=3)
    stats = tensor_stats((base + update) - base, StatsOptions(spectral=True))
    assert diff.rank == stats.rank == 2
    assert stats.spectral is not None
    assert diff.effective_rank == pytest.approx(stats.spectral.effective_rank, rel=1e-12)
    assert diff.top_singular_values[0] == pytest.approx(stats.spectral.top_singular_value, rel=1e-12)
