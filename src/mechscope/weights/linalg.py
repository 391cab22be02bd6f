"""The linear algebra of the weight tools: matrix view, SVD precision, rank, effective and stable rank.

One implementation, used by the per-tensor statistics (`mechscope.weights.stats`) and the checkpoint diff
(`mechscope.weights.diff`), so that both read a tensor the same way.

The matrix view of a tensor (`mechscope.weights.matrix_view.matrix_dims`: 1-D is an n x 1 column, more
than two axes a stack of matrices) decides what is ranked. A 1-D tensor gets no SVD (its one singular
value is its norm): its rank is 1 if any element is non-zero, else 0, numpy ``matrix_rank``'s rule for
vectors; a scalar likewise.

Rank tolerance: a singular value counts when it exceeds ``tol = sigma_max * rtol``; by default ``rtol =
max(rows, cols) * eps(float32)``, what ``numpy.linalg.matrix_rank`` does for a float32 matrix (every tensor
reaches the analysis as float32, so float32 rounding is the noise floor even when the SVD runs in float64).

SVD precision: singular values only (``torch.linalg.svdvals``), in float64 for matrices of up to
`FLOAT64_SVD_MAX_ELEMENTS` elements (accurate small singular values, for the spectral measures and the
rank of small differences, at little cost) and in float32 above that, as numpy does for float32 input
(about half the time; the tolerance is set by float32 anyway). Wide matrices are transposed first (same
values, and LAPACK's path through torch is several times faster on tall ones). Values come back as float64.

Effective rank: ``exp(entropy of s / sum(s))`` (Roy & Vetterli, 2007), 0 for an all-zero spectrum. Stable
rank: ``sum(s**2) / s[0]**2``, NaN for an all-zero spectrum.

Examples:
    >>> matrix_dims((5,)), matrix_dims((4, 3, 2))
    ((5, 1), (3, 2))
    >>> s = singular_values(torch.eye(3)[None])
    >>> int(exact_rank(s, 3, 3)[0]), round(effective_rank(s[0]), 9), stable_rank(s[0])
    (3, 3.0, 3.0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mechscope.weights.matrix_view import matrix_dims

#: Matrices with at most this many elements get their SVD in float64.
FLOAT64_SVD_MAX_ELEMENTS = 1 << 20
#: The SVD precision policy in words (recorded in ``run_meta.json``).
SVD_PRECISION = f"float64 for matrices of <= {FLOAT64_SVD_MAX_ELEMENTS} elements, float32 above"
#: The rank tolerance rule in words.
RANK_TOLERANCE_RULE = "sigma_max * (rank_rtol or max(rows, cols) * eps(float32))"

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def as_matrices(values: Tensor) -> Tensor:
    """``values`` as a ``[stack, rows, cols]`` stack of matrices under the matrix view.

    Examples:
        >>> import torch
        >>> as_matrices(torch.zeros(4, 3, 2)).shape  # leading axes stacked: four 3 x 2 matrices
        torch.Size([4, 3, 2])
        >>> as_matrices(torch.zeros(5)).shape  # a 1-D tensor: one 5 x 1 column
        torch.Size([1, 5, 1])
    """
    rows, cols = matrix_dims(tuple(values.shape))
    return values.reshape(-1, rows, cols)


def svd_dtype(rows: int, cols: int) -> torch.dtype:
    """The dtype the SVD of a ``rows x cols`` matrix runs in (see the module docstring).

    Examples:
        >>> svd_dtype(64, 64), svd_dtype(2048, 1024)  # float64 up to 2**20 elements
        (torch.float64, torch.float32)
    """
    return torch.float64 if rows * cols <= FLOAT64_SVD_MAX_ELEMENTS else torch.float32


def singular_values(matrices: Tensor) -> Tensor:
    """Singular values (descending, float64) of each matrix in a ``[..., rows, cols]`` stack.

    Examples:
        >>> import torch
        >>> singular_values(torch.diag(torch.tensor([2.0, 3.0, 0.0])))
        tensor([3., 2., 0.], dtype=torch.float64)
        >>> singular_values(torch.ones(2, 3, 4)).shape  # two wide matrices: 3 values each
        torch.Size([2, 3])
    """
    rows, cols = matrices.shape[-2], matrices.shape[-1]
    oriented = matrices.mT if rows < cols else matrices
    values: Tensor = torch.linalg.svdvals(oriented.to(svd_dtype(rows, cols)))
    return values.to(torch.float64)


def default_rtol(rows: int, cols: int) -> float:
    """numpy ``matrix_rank``'s relative tolerance for a float32 ``rows x cols`` matrix.

    Examples:
        >>> default_rtol(768, 3072) == 3072 * FLOAT32_EPS, f"{default_rtol(768, 3072):.2e}"
        (True, '3.66e-04')
    """
    return max(rows, cols) * FLOAT32_EPS


def rank_tolerance(sigma_max: Tensor, rows: int, cols: int, rtol: float | None = None) -> Tensor:
    """``sigma_max * rtol``, with `default_rtol` when ``rtol`` is None.

    Examples:
        >>> import torch
        >>> rank_tolerance(torch.tensor([2.0]), 3, 3, rtol=0.1)
        tensor([0.2000])
        >>> bool(rank_tolerance(torch.tensor([2.0]), 768, 3072) == 2.0 * default_rtol(768, 3072))
        True
    """
    return sigma_max * (rtol if rtol is not None else default_rtol(rows, cols))


def above_tolerance(s: Tensor, rows: int, cols: int, rtol: float | None = None) -> Tensor:
    """Which singular values count towards the rank; ``s`` is ``[..., k]``, descending along the last axis.

    Examples:
        >>> import torch
        >>> above_tolerance(torch.tensor([[3.0, 1e-9, 0.0]], dtype=torch.float64), 3, 3)  # 1e-9: rounding noise
        tensor([[ True, False, False]])
    """
    return s > rank_tolerance(s[..., :1], rows, cols, rtol)


def exact_rank(s: Tensor, rows: int, cols: int, rtol: float | None = None) -> Tensor:
    """The numerical rank of each matrix whose singular values are the rows of ``s`` (``[..., k]``).

    Examples:
        >>> import torch
        >>> s = torch.tensor([[3.0, 1e-9, 0.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
        >>> exact_rank(s, 3, 3), exact_rank(s, 3, 3, rtol=1e-12)  # a tighter rtol counts the 1e-9 too
        (tensor([1, 3]), tensor([2, 3]))
    """
    return above_tolerance(s, rows, cols, rtol).sum(dim=-1)


def vector_rank(values: Tensor) -> int:
    """The rank of a 1-D tensor or scalar: 1 if any element is non-zero, else 0.

    Examples:
        >>> import torch
        >>> vector_rank(torch.zeros(4)), vector_rank(torch.tensor([0.0, 2.0])), vector_rank(torch.tensor(0.5))
        (0, 1, 1)
    """
    return int(bool((values != 0).any()))


def effective_rank(s: Tensor) -> float:
    """``exp(-sum p log p)`` with ``p = s / sum(s)`` over one matrix's singular values; 0 if all are zero.

    Examples:
        >>> import torch
        >>> round(effective_rank(torch.ones(4)), 6), round(effective_rank(torch.tensor([4.0, 1.0, 0.0])), 4)
        (4.0, 1.6494)
        >>> effective_rank(torch.zeros(3))
        0.0
    """
    total = float(s.sum())
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(s: Tensor) -> float:
    """``sum(s**2) / s_max**2`` over one matrix's singular values; NaN if all are zero.

    Examples:
        >>> import torch
        >>> stable_rank(torch.tensor([2.0, 1.0, 1.0])), stable_rank(torch.zeros(2))  # (4 + 1 + 1) / 4
        (1.5, nan)
    """
    top = float(s.max()) if s.numel() else 0.0
    if top <= 0.0:
        return math.nan
    return float((s.double() ** 2).sum()) / top**2
