"""Per-tensor statistics: moments, sparsity, exact numerical rank and (optionally) spectral measures.

Definitions (what every column of the weight table means):

* ``mean``, ``var``, ``std``: population moments (``ddof=0``, numpy's default), accumulated in float64 over
  chunks of the float32 values in one pass (Chan et al.'s pairwise combination of chunk moments).
* ``sparsity``: the fraction of elements with ``abs(x) <= threshold`` (default ``1e-8``).
* ``rows`` / ``cols`` and ``rank``: the matrix view, rank tolerance and SVD precision of
  `mechscope.weights.linalg`: a 2-D tensor is its own matrix, a 1-D tensor of length n is an n x 1 column
  (rank 1 if any element is non-zero, else 0), a scalar is 1 x 1, and a tensor with more dims, such as
  stacked experts ``[E, a, b]``, is a stack of ``a x b`` matrices whose rank is the largest of its members.
  ``rank`` counts the singular values above ``sigma_max * max(rows, cols) * eps(float32)`` (numpy
  ``matrix_rank``'s rule for float32 input), or above ``sigma_max * rank_rtol``. A tensor holding NaN or
  inf has rank -1 and no spectral measures.

Spectral measures (``spectral=True``), from the same singular values ``s`` (descending):

* ``top_singular_value`` = s[0]; ``frobenius_norm`` = sqrt(sum s**2).
* ``stable_rank`` = ||W||_F**2 / s[0]**2 (`mechscope.weights.linalg.stable_rank`).
* ``effective_rank`` = exp(entropy of s / sum(s)) (Roy & Vetterli, 2007; `mechscope.weights.linalg.effective_rank`).
* ``condition_number`` = s[0] / the smallest singular value above the rank tolerance.
* ``alpha``: the exponent of a power law fitted to the tail of the eigenvalues lambda = s**2, by the rule of
  weightwatcher's default fit (its ``WWFit``, ``fit='power_law'``; Clauset, Shalizi & Newman, 2009). With
  the n eigenvalues sorted ascending, each ``lambda_i`` but the largest is a candidate ``lambda_min``; its
  tail is ``lambda_i .. lambda_{n-1}`` (m = n - i values), its exponent the continuous maximum-likelihood
  estimate ``alpha_i = 1 + m / sum_j ln(lambda_j / lambda_i)``, and its Kolmogorov-Smirnov distance the
  one-sided ``D_i = max_k |k / m - (1 - (lambda_{i+k} / lambda_i) ** (1 - alpha_i))|`` over k = 0 .. m-1
  (the empirical CDF at ``k / m``, as weightwatcher and the ``powerlaw`` package compute it). alpha is the
  ``alpha_i`` of the smallest ``D_i`` (the first on a tie). A candidate whose tail is one repeated value has
  no finite estimate and is skipped. NaN with fewer than `MIN_EIGENVALUES` non-zero eigenvalues (those above
  the rank tolerance; weightwatcher drops eigenvalues <= 1e-5 instead, which changes nothing unless the fit
  would start among them). Known differences: weightwatcher 0.7.7 fits fewer than 20 eigenvalues with a
  bias-corrected, penalised variant, and ``powerlaw`` 2.x confines alpha to [0, 3] by default.

For a stack of matrices, ``top_singular_value`` is the largest over the stack, ``frobenius_norm`` is that of
the whole tensor, and the other measures are means over the stack. For a 1-D tensor (an n x 1 matrix)
s = [||x||], so stable rank, effective rank and condition number are 1 and alpha is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mechscope.weights.linalg import (
    above_tolerance,
    effective_rank,
    singular_values,
    stable_rank,
    vector_rank,
)
from mechscope.weights.matrix_view import matrix_dims

#: Spectral columns, in table order.
SPECTRAL_COLUMNS: tuple[str, ...] = (
    "top_singular_value",
    "frobenius_norm",
    "stable_rank",
    "effective_rank",
    "condition_number",
    "alpha",
)
#: Fewest non-zero eigenvalues for which a power law is fitted.
MIN_EIGENVALUES = 10
# Elements per chunk of the moment pass: bounds the float64 temporaries at 32 MB.
_CHUNK = 1 << 22
# Candidate lambda_min values evaluated together in the power-law fit (bounds its memory).
_FIT_BLOCK = 256


@dataclass(frozen=True)
class SpectralStats:
    """The spectral measures of one tensor (see the module docstring).

    Examples:
        >>> stats = tensor_stats(torch.diag(torch.tensor([4.0, 2.0, 1.0])), StatsOptions(spectral=True))
        >>> spectral = stats.spectral  # singular values 4, 2, 1
        >>> spectral.top_singular_value, round(spectral.frobenius_norm**2, 9), spectral.stable_rank  # 21 / 16
        (4.0, 21.0, 1.3125)
        >>> spectral.condition_number, spectral.alpha  # alpha needs at least MIN_EIGENVALUES eigenvalues
        (4.0, nan)
    """

    top_singular_value: float
    frobenius_norm: float
    stable_rank: float
    effective_rank: float
    condition_number: float
    alpha: float


@dataclass(frozen=True)
class TensorStats:
    """The statistics of one tensor (see the module docstring for each definition)."""

    rows: int
    cols: int
    rank: int
    mean: float
    std: float
    var: float
    sparsity: float
    spectral: SpectralStats | None = None


@dataclass(frozen=True)
class StatsOptions:
    """How statistics are computed.

    Attributes:
        sparsity_threshold: elements with ``abs(x) <=`` this count as zero.
        rank_rtol: relative tolerance of the rank; None: ``max(rows, cols) * eps(float32)``.
        spectral: also compute the spectral measures.
        device: where the SVD and moments run (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).

    Examples:
        >>> weight = torch.diag(torch.tensor([1.0, 1.0, 1e-3]))
        >>> tensor_stats(weight).rank, tensor_stats(weight, StatsOptions(rank_rtol=0.01)).rank  # 1e-3 < 1 * 0.01
        (3, 2)
        >>> tensor_stats(torch.tensor([0.0, 1e-9, 1.0]), StatsOptions(sparsity_threshold=1e-6)).sparsity
        0.6666666666666666
    """

    sparsity_threshold: float = 1e-8
    rank_rtol: float | None = None
    spectral: bool = False
    device: str = "cpu"


def moments(values: torch.Tensor, sparsity_threshold: float = 1e-8) -> tuple[float, float, float]:
    """``(mean, population variance, sparsity)`` of ``values`` in one chunked float64 pass.

    Examples:
        >>> moments(torch.tensor([1.0, 2.0, 3.0, 0.0]))  # one element of four is zero
        (1.5, 1.25, 0.25)
        >>> moments(torch.empty(0))
        (nan, nan, 0.0)
    """
    flat = values.reshape(-1)
    total = flat.numel()
    if total == 0:
        return math.nan, math.nan, 0.0
    count = 0
    mean = 0.0
    m2 = 0.0
    near_zero = 0
    for start in range(0, total, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        n = chunk.numel()
        var_c, mean_c = torch.var_mean(chunk.to(torch.float64), correction=0)
        mean_b, m2_b = float(mean_c), float(var_c) * n
        delta = mean_b - mean
        combined = count + n
        mean += delta * n / combined
        m2 += m2_b + delta * delta * count * n / combined
        count = combined
        near_zero += int((chunk.abs() <= sparsity_threshold).sum())
    return mean, m2 / total, near_zero / total


def power_law_alpha(eigenvalues: np.ndarray) -> float:
    """The power-law exponent of the tail of ``eigenvalues``, fitted like weightwatcher (see the module docstring).

    Clauset's continuous MLE for each candidate ``lambda_min`` among the sorted values (all but the largest),
    keeping the one of least one-sided Kolmogorov-Smirnov distance (empirical CDF at ``k / m``).

    Args:
        eigenvalues: eigenvalues, any order; values <= 0 are dropped.

    Returns:
        alpha, or NaN when fewer than `MIN_EIGENVALUES` positive values are given.

    Examples:
        Samples of a Pareto law whose density falls as ``x ** -2.5``:

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> round(power_law_alpha((1 - rng.random(1000)) ** (-1 / 1.5)), 2)
        2.55
        >>> power_law_alpha(np.ones(5))  # fewer than MIN_EIGENVALUES values
        nan
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))
    lam = lam[lam > 0]
    n = lam.size
    if n < MIN_EIGENVALUES:
        return math.nan
    logs = np.log(lam)
    best_alpha, best_distance = math.nan, math.inf
    # Candidates are lam[0 .. n-2]: each leaves at least two values in its tail.
    for start in range(0, n - 1, _FIT_BLOCK):
        idx = np.arange(start, min(start + _FIT_BLOCK, n - 1))
        tail = (n - idx).astype(np.float64)  # m for each candidate
        position = np.arange(n)[None, :] - idx[:, None]  # k, the rank within the candidate's tail
        in_tail = position >= 0
        log_ratio = np.where(in_tail, logs[None, :] - logs[idx][:, None], 0.0)  # ln(lambda_j / lambda_min)
        spread = log_ratio.sum(axis=1)
        usable = spread > 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            alpha = np.where(usable, 1.0 + tail / np.where(usable, spread, 1.0), np.nan)
            fitted = 1.0 - np.exp((1.0 - alpha[:, None]) * log_ratio)  # the fitted CDF at each tail value
            empirical = position / tail[:, None]  # k / m
            distance = np.where(in_tail, np.abs(empirical - fitted), 0.0).max(axis=1)
        distance[~usable | ~np.isfinite(alpha) | ~np.isfinite(distance)] = np.inf
        pick = int(np.argmin(distance))
        if distance[pick] < best_distance:
            best_distance, best_alpha = float(distance[pick]), float(alpha[pick])
    return best_alpha


def _spectral(s: torch.Tensor, kept: torch.Tensor) -> SpectralStats:
    """Spectral measures of a stack of singular-value rows ``s`` [k, m]; ``kept`` marks values above tol."""
    sigma_max = s[:, 0]
    energy = (s**2).sum(dim=1)
    stable = []
    effective = []
    condition = []
    alphas = []
    for row, keep, top in zip(s, kept, sigma_max.tolist(), strict=True):
        if top <= 0:
            stable.append(math.nan)
            effective.append(math.nan)
            condition.append(math.nan)
            alphas.append(math.nan)
            continue
        stable.append(stable_rank(row))
        effective.append(effective_rank(row))
        nonzero = row[keep]
        condition.append(top / float(nonzero.min()))
        alphas.append(power_law_alpha((nonzero**2).cpu().numpy()))
    return SpectralStats(
        top_singular_value=float(sigma_max.max()),
        frobenius_norm=math.sqrt(float(energy.sum())),
        stable_rank=_nanmean(stable),
        effective_rank=_nanmean(effective),
        condition_number=_nanmean(condition),
        alpha=_nanmean(alphas),
    )


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


_NAN_SPECTRAL = SpectralStats(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


def _vector_spectral(values: torch.Tensor) -> SpectralStats:
    norm = float(torch.linalg.vector_norm(values.reshape(-1).to(torch.float64)))
    if norm == 0:
        return SpectralStats(0.0, 0.0, math.nan, math.nan, math.nan, math.nan)
    return SpectralStats(norm, norm, 1.0, 1.0, 1.0, math.nan)


def batch_stats(batch: torch.Tensor, options: StatsOptions) -> list[TensorStats]:
    """Statistics of each tensor in ``batch``, a stack ``[B, *shape]`` of same-shaped tensors.

    One ``svdvals`` call serves the whole batch (and every expert of stacked-expert tensors).

    Args:
        batch: float32 tensors stacked on a new leading dim, on the device the work should run on.
        options: thresholds, rank tolerance, whether to compute spectral measures.

    Returns:
        One `TensorStats` per tensor, in batch order.

    Examples:
        >>> batch = torch.stack([torch.eye(3), torch.zeros(3, 3), torch.ones(3, 3)])
        >>> [(stats.rank, round(stats.sparsity, 3)) for stats in batch_stats(batch, StatsOptions())]
        [(3, 0.667), (0, 1.0), (1, 0.0)]
    """
    shape = tuple(batch.shape[1:])
    rows, cols = matrix_dims(shape)
    first = [moments(tensor, options.sparsity_threshold) for tensor in batch]
    finite = [math.isfinite(mean) and math.isfinite(var) for mean, var, _ in first]
    ranks: list[int] = [-1] * len(first)
    spectra: list[SpectralStats | None] = [None] * len(first)
    if len(shape) < 2:
        for i, tensor in enumerate(batch):
            if finite[i]:
                ranks[i] = vector_rank(tensor)
                spectra[i] = _vector_spectral(tensor) if options.spectral else None
    elif any(finite) and rows * cols > 0:
        good = [i for i, ok in enumerate(finite) if ok]
        subset = batch if len(good) == len(first) else batch[good]
        s = singular_values(subset.reshape(len(good), -1, rows, cols))  # [B, stack, k]
        kept = above_tolerance(s, rows, cols, options.rank_rtol)
        per_matrix = kept.sum(dim=-1)  # [B, stack]
        for j, i in enumerate(good):
            ranks[i] = int(per_matrix[j].max())
            spectra[i] = _spectral(s[j], kept[j]) if options.spectral else None
    elif rows * cols == 0:
        ranks = [0 if ok else -1 for ok in finite]
    if options.spectral:
        spectra = [spec if spec is not None else _NAN_SPECTRAL for spec in spectra]
    return [
        TensorStats(
            rows=rows,
            cols=cols,
            rank=rank,
            mean=mean,
            std=math.sqrt(var) if var >= 0 else math.nan,
            var=var,
            sparsity=sparsity,
            spectral=spectrum,
        )
        for (mean, var, sparsity), rank, spectrum in zip(first, ranks, spectra, strict=True)
    ]


def tensor_stats(values: torch.Tensor, options: StatsOptions | None = None) -> TensorStats:
    """Statistics of one tensor (see `batch_stats`).

    Examples:
        >>> stats = tensor_stats(torch.eye(4))
        >>> stats.rank, stats.sparsity, round(stats.mean, 4)
        (4, 0.75, 0.25)
    """
    options = options or StatsOptions()
    return batch_stats(values.to(options.device, torch.float32).unsqueeze(0), options)[0]
