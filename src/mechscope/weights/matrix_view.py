"""The matrix view of a tensor: which ``rows x cols`` matrices the weight tools see in a tensor of a shape.

* 2-D: the matrix itself, ``rows x cols = shape``.
* more than two axes (stacked MoE experts ``[E, a, b]``): a stack of ``a x b`` matrices; its rank is the
  largest rank in the stack.
* 1-D of length n: an **n x 1 column** (rows = n, cols = 1), the convention of the weight table and the
  README.
* 0-D (a scalar): 1 x 1.

Plain shape arithmetic, without torch, so that result types and reports can use it.

Examples:
    >>> matrix_dims((5,)), matrix_dims((4, 3, 2))
    ((5, 1), (3, 2))
"""

from __future__ import annotations

from collections.abc import Sequence


def matrix_dims(shape: Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)`` of the matrices a tensor of ``shape`` is seen as (see the module docstring)."""
    dims = tuple(shape)
    if len(dims) == 0:
        return 1, 1
    if len(dims) == 1:
        return dims[0], 1
    return dims[-2], dims[-1]
