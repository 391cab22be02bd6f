"""Compare a base checkpoint with a fine-tuned one, tensor by tensor, without loading either model.

Tensors are paired by name and streamed one pair at a time, so memory stays bounded by a small multiple
of the largest tensor. For each pair (A = base, B = fine-tuned):

- relative change ``||B - A||_F / ||A||_F``, cosine similarity of the flattened tensors, ``||B - A||_F``
  (sums accumulate in float64, chunk by chunk, so a cosine of 0.9999999 is still resolved);
- numerical rank, effective rank and top-k singular values of ``B - A``.

Matrix view, rank tolerance and SVD precision are those of `mechscope.weights.linalg`, shared with
`mechscope.weights.stats`: a 2-D tensor is used as is; a tensor with more than two axes (stacked MoE experts
``[experts, out, in]``) is a stack of ``shape[-2] x shape[-1]`` matrices: its rank is the largest rank in the
stack, its effective rank the mean, and its top singular values the largest over the whole stack. 0-D and
1-D tensors (biases, norm weights; a 1-D tensor is an n x 1 column) get no SVD: their rank and effective
rank are 1 if they changed at all, else 0, and they list no singular values.

Rank tolerance: a singular value counts when it exceeds ``rtol * s_max``; by default ``rtol =
max(rows, cols) * eps(float32)``, numpy ``matrix_rank``'s rule. Differences of bf16/fp16 checkpoints carry
rounding noise far above that; pass e.g. ``rank_rtol=1e-3`` to count only directions above the noise.

Example (a tiny random Llama and a copy with a rank-1 change to one tensor):
    >>> import tempfile
    >>> from safetensors.torch import load_file, save_file
    >>> from mechscope.testing.tiny_models import build_tiny_model
    >>> from mechscope.weights.diff import diff_checkpoints
    >>> base = build_tiny_model("llama", Path(tempfile.mkdtemp()) / "base")
    >>> weights = load_file(base / "model.safetensors")
    >>> weights["model.layers.1.self_attn.o_proj.weight"] += 0.01 * torch.ones(64, 64)
    >>> tuned = Path(tempfile.mkdtemp())
    >>> save_file(weights, tuned / "model.safetensors")
    >>> result = diff_checkpoints(base, tuned, top_k=5)
    >>> top = result.ranked_params(3)[0]
    >>> top.param_name, top.rank, result.ranked_layers(1)[0].layer_index
    ('model.layers.1.self_attn.o_proj.weight', 1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import Tensor

from mechscope.errors import InputError, WeightFileError
from mechscope.progress import track
from mechscope.weights.diff_results import ParamDiff, WeightDiff, _ratio
from mechscope.weights.linalg import (
    as_matrices,
    effective_rank,
    exact_rank,
    singular_values,
    vector_rank,
)
from mechscope.weights.matrix_view import matrix_dims

_CHUNK = 1 << 22
"""Elements per float64 chunk when accumulating norms: bounds the extra memory at 32 MiB per operand."""
_MISMATCHES_SHOWN = 3


def tensor_diff(
    name: str,
    base: Tensor,
    finetuned: Tensor,
    *,
    layer_index: int | None = None,
    block_type: str = "other",
    top_k: int = 5,
    rank_rtol: float | None = None,
    base_dtype: str | None = None,
    finetuned_dtype: str | None = None,
) -> ParamDiff:
    """Compare one base tensor with its fine-tuned version (same shape).

    Args:
        name: the tensor's name (recorded in the result).
        base: the base tensor A (any float dtype, any device; computed in float32 / float64 on that device).
        finetuned: the fine-tuned tensor B, same shape as ``base``.
        layer_index: the layer it belongs to, if any (recorded).
        block_type: its block type (recorded).
        top_k: how many of the largest singular values of ``B - A`` to keep.
        rank_rtol: relative rank tolerance; None for numpy's ``max(rows, cols) * eps(float32)``.
        base_dtype: the stored dtype to record (default: ``base.dtype``).
        finetuned_dtype: the stored dtype to record (default: ``finetuned.dtype``).

    Returns:
        A `ParamDiff`; an unchanged tensor has relative change 0, cosine 1 and rank 0.

    Examples:
        >>> a = torch.zeros(4, 3)
        >>> tensor_diff("w", a, a + torch.outer(torch.ones(4), torch.ones(3))).rank
        1
    """
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if rank_rtol is not None and not rank_rtol >= 0.0:
        raise InputError(f"rank_rtol must be a non-negative number, got {rank_rtol}")
    if base.shape != finetuned.shape:
        raise WeightFileError(
            f"{name}: shape {tuple(base.shape)} vs {tuple(finetuned.shape)}; both tensors must have the same shape"
        )
    a = base.detach().to(torch.float32).reshape(-1)
    b = finetuned.detach().to(device=a.device, dtype=torch.float32).reshape(-1)
    aa, bb, ab, dd = _sums(a, b)
    base_norm, finetuned_norm, diff_norm = math.sqrt(aa), math.sqrt(bb), math.sqrt(dd)
    if dd == 0.0:
        cosine = 1.0  # equal tensors, also when both are zero
    elif aa == 0.0 or bb == 0.0:
        cosine = 0.0  # undefined against a zero tensor; 0 says "no shared direction"
    else:
        cosine = max(-1.0, min(1.0, ab / math.sqrt(aa * bb)))
    rank, effective, top = _spectrum(b - a, tuple(base.shape), top_k, rank_rtol, changed=dd > 0.0)
    return ParamDiff(
        param_name=name,
        layer_index=layer_index,
        block_type=block_type,
        shape=tuple(base.shape),
        base_dtype=base_dtype or _dtype_name(base.dtype),
        finetuned_dtype=finetuned_dtype or _dtype_name(finetuned.dtype),
        base_norm=base_norm,
        finetuned_norm=finetuned_norm,
        diff_norm=diff_norm,
        relative_change=_ratio(diff_norm, base_norm),
        cosine=cosine,
        rank=rank,
        effective_rank=effective,
        top_singular_values=top,
    )


def diff_checkpoints(
    base: str | Path,
    finetuned: str | Path,
    *,
    top_k: int = 5,
    rank_rtol: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> WeightDiff:
    """Compare two checkpoints of the same architecture, one tensor pair at a time.

    Args:
        base: the base checkpoint: a folder, a checkpoint file, a HF cache snapshot or a hub id.
        finetuned: the fine-tuned checkpoint, same forms.
        top_k: singular values of each difference to keep.
        rank_rtol: relative rank tolerance (see the module docstring); None for numpy's rule.
        device: where to compute (default: the first CUDA device when there is one, else the CPU).
        progress: show a progress bar with ETA on stderr.

    Returns:
        A `WeightDiff` with per-tensor rows, per-layer and per-block summaries and rankings.

    Examples:
        Two tiny checkpoints; the fine-tuned one moves layer 1's up-projection by half its value (rank 1):

        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> base = {f"model.layers.{i}.mlp.up_proj.weight": torch.ones(8, 4) for i in (0, 1)}
        >>> tuned = base | {"model.layers.1.mlp.up_proj.weight": 1.5 * torch.ones(8, 4)}
        >>> a, b = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
        >>> save_file(base, a / "model.safetensors")
        >>> save_file(tuned, b / "model.safetensors")
        >>> result = diff_checkpoints(a, b, top_k=2, device="cpu")
        >>> [(p.layer_index, p.relative_change, p.rank, round(p.top_singular_values[0], 4)) for p in result.params]
        [(0, 0.0, 0, 0.0), (1, 0.5, 1, 2.8284)]
        >>> result.most_changed_params[0], diff_checkpoints(a, a, device="cpu").identical
        ('model.layers.1.mlp.up_proj.weight', True)

    Raises:
        WeightFileError: the checkpoints differ in tensor names or shapes (the first mismatches are listed),
            or a file cannot be read.
    """
    from mechscope.weights.blocks import classify
    from mechscope.weights.reader import open_checkpoint

    target = torch.device(device) if device is not None else _default_device()
    params: list[ParamDiff] = []
    with open_checkpoint(base) as a, open_checkpoint(finetuned) as b:
        names = check_same_architecture({n: a.shape(n) for n in a.names()}, {n: b.shape(n) for n in b.names()})
        for name in _progress(names, progress):
            layer_index, block_type = classify(name, a.shape(name))
            params.append(
                tensor_diff(
                    name,
                    a.read(name).to(target),
                    b.read(name).to(target),
                    layer_index=layer_index,
                    block_type=block_type,
                    top_k=top_k,
                    rank_rtol=rank_rtol,
                    base_dtype=a.dtype(name),
                    finetuned_dtype=b.dtype(name),
                )
            )
    return WeightDiff.build(
        params,
        base=str(base),
        finetuned=str(finetuned),
        top_k=top_k,
        rank_rtol=rank_rtol,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def check_same_architecture(base: dict[str, tuple[int, ...]], finetuned: dict[str, tuple[int, ...]]) -> list[str]:
    """The tensor names to compare, in the base's order; raises when names or shapes differ.

    Args:
        base: tensor name -> shape in the base checkpoint.
        finetuned: tensor name -> shape in the fine-tuned checkpoint.

    Examples:
        >>> check_same_architecture({"w": (4, 4), "b": (4,)}, {"w": (4, 4), "b": (4,)})
        ['w', 'b']
        >>> check_same_architecture({"w": (4, 4), "b": (4,)}, {"w": (4, 8), "c": (4,)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mechscope.errors.WeightFileError: 3 tensors differ: w shape (4, 4) vs (4, 8); b only in base; c only in ...

    Raises:
        WeightFileError: one line counting the mismatches and listing the first few.
    """
    problems = []
    for name, shape in base.items():
        if name not in finetuned:
            problems.append(f"{name} only in base")
        elif tuple(finetuned[name]) != tuple(shape):
            problems.append(f"{name} shape {tuple(shape)} vs {tuple(finetuned[name])}")
    problems += [f"{name} only in fine-tuned" for name in finetuned if name not in base]
    if problems:
        shown = "; ".join(problems[:_MISMATCHES_SHOWN]) + ("; ..." if len(problems) > _MISMATCHES_SHOWN else "")
        noun = "tensor differs" if len(problems) == 1 else "tensors differ"
        raise WeightFileError(f"{len(problems)} {noun}: {shown} — both checkpoints must have the same architecture")
    return list(base)


def _sums(a: Tensor, b: Tensor) -> tuple[float, float, float, float]:
    """``(<a,a>, <b,b>, <a,b>, <b-a,b-a>)`` of two flat float32 tensors, accumulated in float64 by chunks."""
    aa = bb = ab = dd = 0.0
    for start in range(0, a.numel(), _CHUNK):
        x = a[start : start + _CHUNK].double()
        y = b[start : start + _CHUNK].double()
        d = y - x
        aa += float(x @ x)
        bb += float(y @ y)
        ab += float(x @ y)
        dd += float(d @ d)
    return aa, bb, ab, dd


def _spectrum(
    diff: Tensor, shape: tuple[int, ...], top_k: int, rank_rtol: float | None, *, changed: bool
) -> tuple[int, float, list[float]]:
    """Rank, effective rank and top-k singular values of the difference (see the module docstring)."""
    if len(shape) <= 1:
        rank = vector_rank(diff)
        return rank, float(rank), []
    rows, cols = matrix_dims(shape)
    if not changed:
        return 0, 0.0, [0.0] * min(top_k, rows, cols)
    # A stack of matrices (experts) is decomposed matrix by matrix, as in `mechscope.weights.stats`.
    singular = singular_values(as_matrices(diff.reshape(shape)))
    rank = int(exact_rank(singular, rows, cols, rank_rtol).max())
    effective = sum(effective_rank(s) for s in singular) / singular.shape[0]
    top = singular.flatten().sort(descending=True).values[:top_k]
    return rank, effective, [float(s) for s in top]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _progress(names: list[str], show: bool) -> Iterator[str]:
    yield from track(names, "diffing tensors", enabled=show)
