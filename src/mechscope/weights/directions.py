"""Directions through weights: how a layer's attention heads and MLP read a set of residual directions.

No forward pass and no loaded model: the architecture is built on the meta device and only the tensors of
the analysed layers are read from the checkpoint (`mechscope.weights.layer_weights`).

Definitions. ``D`` is ``[k, d_model]``, rows scaled to unit norm unless ``normalize=False``; ``u_j`` is
direction ``j`` scaled to unit norm (always). Each direction is treated as if it were the whole residual
stream of a token entering layer ``L``:

* **Norm.** ``d̃_i = norm_attn(d_i)``: the layer's own pre-attention norm module (RMSNorm ``d / rms(d) · w``,
  Gemma's ``· (1 + w)``, LayerNorm centred and scaled, with the checkpoint's eps). Post-norm layers (BERT,
  OLMo-2) have no norm in front of the block: ``d̃_i = d_i``, so their results scale with the directions'
  norms. Post-block norms (Gemma-2/3, OLMo-2, BERT's LayerNorms) are never applied: they normalise the
  whole block output (all heads together, and for BERT the residual too).
* **QK affinity**, per head ``h`` (grouped-query attention: query head ``h`` reads key/value head
  ``h // (n_heads / n_kv_heads)``): ``A_h[i, j] = s · q_h(d̃_i) · k_h(d̃_j)`` with ``q_h(x) = W_Q,h x + b_Q,h``,
  ``k_h(x) = W_K,h x + b_K,h`` (biases included, as the model computes them; q/k norms of Qwen-3, Gemma-3,
  OLMo-2, OLMoE applied) and ``s`` the model's own score scale (``1/sqrt(head_dim)``, or Gemma-2's
  ``query_pre_attn_scalar``, Granite's multiplier ...). Row ``i`` is the query (the reading token), column
  ``j`` the key. It is position-free: RoPE, ALiBi, attention sinks and logit soft-capping are ignored.
* **OV**, per head: ``o_h,i = W_O,h (W_V,h d̃_i + b_V,h)``, what head ``h`` adds to the residual when it
  attends fully to a token whose residual is ``d_i`` (the output projection's bias is not per head and is
  left out). Reported as ``ov_norm[h][i] = |o_h,i|`` and ``ov[h][i][j] = o_h,i · u_j``, the component
  written along direction ``j`` (a dot product with the unit direction, not a cosine, so that strength
  counts and differences of checkpoints stay linear).
* **MLP response**: ``r_i = MLP(norm_mlp(d_i))`` with the family's own MLP module (activation, gating,
  fused ``gate_up_proj``, GPT-2 ``Conv1D``; BERT's intermediate and output dense layers without the
  post-LayerNorm; MoE blocks with their router, top-k experts and shared experts, also when the checkpoint
  stores experts one per expert). Reported as ``mlp_norm[i] = |r_i|`` and ``mlp[i][j] = r_i · u_j``. A
  layer whose MLP tensors cannot be found gets no MLP response and an ``mlp_note`` saying why.
* **Difference mode** (``base=``): every quantity is computed in each checkpoint (with its own norms) and
  subtracted, ``A = A_model - A_base``, ``o = o_model - o_base``, ``r = r_model - r_base``, and norms and
  projections are those of the differences. When the norms did not change this is the bilinear form of the
  weight change: ``A_h = s · D̃ (W_Q'ᵀW_K' - W_QᵀW_K) D̃ᵀ`` (plus bias terms) and ``o = (W_O'W_V' - W_OW_V) d̃``
  — not ``ΔW_Qᵀ ΔW_K``.
* **z-scores**: ``n_random`` Gaussian directions in ``d_model`` (seeded, unit norm, or scaled to the mean
  norm of ``D`` when ``normalize=False``), the same set at every layer, go through the same computation.
  For each layer, head and statistic the baseline is the random directions' values: for pair statistics
  the diagonal entries (a direction with itself) and the off-diagonal ones separately, and ``z = (x -
  mean) / std``; ``z = 0`` where the baseline has no spread (``std = 0``, e.g. a difference of identical
  checkpoints).

Example (three random directions through a tiny random Llama: 2 layers, 4 heads, ``d_model`` 64):
    >>> import tempfile
    >>> from mechscope.testing.tiny_models import build_tiny_model
    >>> from mechscope.weights.directions import directions_through_weights
    >>> folder = build_tiny_model("llama", Path(tempfile.mkdtemp()) / "llama")
    >>> dirs = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    >>> result = directions_through_weights(folder, dirs, layers="0-1", n_random=20, top=5)
    >>> [entry.layer for entry in result.layers], len(result.layers[0].qk), result.directions, len(result.top)
    ([0, 1], 4, ['d0', 'd1', 'd2'], 5)
    >>> same = directions_through_weights(folder, dirs, base=folder, layers="0", n_random=10)
    >>> max(abs(row.value) for row in same.top)  # a checkpoint minus itself: every interaction is zero
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mechscope.core import layers as core_layers
from mechscope.errors import InputError
from mechscope.weights.direction_sets import DirectionSet, load_directions
from mechscope.weights.directions_results import (
    Baseline,
    DirectionsResult,
    Interaction,
    Kind,
    LayerDirections,
    Matrix,
    NormBaseline,
)
from mechscope.weights.layer_weights import LayerWeights, Skeleton, build_skeleton, read_layer
from mechscope.weights.reader import Checkpoint, open_checkpoint
from mechscope.weights.readout import Readout, readout

__all__ = [
    "analyze_layer",
    "directions_through_weights",
    "random_directions",
    "readout",
    "resolve_layers",
    "top_interactions",
]


def _unit(x: Tensor) -> Tensor:
    unit: Tensor = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return unit


@dataclass(frozen=True)
class _Stats:
    """Pair statistics ``[groups, n, n]`` and norms ``[groups, n]`` (None for QK) of one kind (groups: heads, or 1)."""

    pairs: Tensor
    norms: Tensor | None


def _stats(result: Readout, targets: Tensor) -> dict[Kind, _Stats]:
    stats: dict[Kind, _Stats] = {
        "qk": _Stats(result.qk, None),
        "ov": _Stats(torch.einsum("hnd,md->hnm", result.ov, targets), result.ov.norm(dim=-1)),
    }
    if result.mlp is not None:
        stats["mlp"] = _Stats((result.mlp @ targets.T)[None], result.mlp.norm(dim=-1)[None])
    return stats


def _pair_baseline(pairs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per group: mean/std of the diagonal and of the off-diagonal entries of ``[groups, n, n]``."""
    n = pairs.shape[-1]
    eye = torch.eye(n, dtype=torch.bool)
    diag = pairs[:, eye]
    off = pairs[:, ~eye]
    return diag.mean(-1), diag.std(-1), off.mean(-1), off.std(-1)


def _z(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    spread = std > 0
    safe = torch.where(spread, std, torch.ones_like(std))
    return torch.where(spread, (x - mean) / safe, torch.zeros_like(x))


def _pair_z(pairs: Tensor, baseline: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    d_mean, d_std, o_mean, o_std = (b[:, None, None] for b in baseline)
    eye = torch.eye(pairs.shape[-1], dtype=torch.bool)
    return torch.where(eye, _z(pairs, d_mean, d_std), _z(pairs, o_mean, o_std))


def analyze_layer(
    weights: LayerWeights,
    directions: Tensor,
    random: Tensor,
    base: LayerWeights | None = None,
) -> LayerDirections:
    """The `LayerDirections` of one layer: ``directions`` (``[k, d_model]``, already scaled as wanted) and
    their z-scores against ``random`` (``[R, d_model]``); with ``base``, of the difference ``weights - base``.

    Examples:
        Layer 1 of the toy organism (4 heads, ``d_model`` 128) reading three random directions:

        >>> from mechscope.weights.layer_weights import build_skeleton, read_layer
        >>> with open_checkpoint("toy") as checkpoint:
        ...     weights = read_layer(checkpoint, build_skeleton(checkpoint), 1)
        >>> dirs, noise = random_directions(3, 128, seed=1), random_directions(20, 128, seed=0)
        >>> entry = analyze_layer(weights, dirs, noise)
        >>> entry.layer, len(entry.qk), len(entry.qk[0]), len(entry.ov_norm[0]), len(entry.mlp)  # heads x 3 x 3
        (1, 4, 3, 3, 3)
        >>> analyze_layer(weights, dirs, noise, base=weights).qk[0][0]  # weights minus themselves
        [0.0, 0.0, 0.0]
    """
    real, noise = readout(weights, directions), readout(weights, random)
    if base is not None:
        real, noise = real - readout(base, directions), noise - readout(base, random)
    stats, null = _stats(real, _unit(directions)), _stats(noise, _unit(random))
    fields: dict[str, object] = {"layer": weights.layer, "mlp_note": weights.mlp_note}
    if base is not None and base.mlp_note and not weights.mlp_note:
        fields["mlp_note"] = base.mlp_note
    for kind, own in stats.items():
        if kind not in null:
            continue
        squeeze = kind == "mlp"  # one MLP per layer: drop the group axis

        def plain(x: Tensor, squeeze: bool = squeeze) -> object:
            return x[0].tolist() if squeeze else x.tolist()

        baseline = _pair_baseline(null[kind].pairs)
        fields[kind] = plain(own.pairs)
        fields[f"{kind}_z"] = plain(_pair_z(own.pairs, baseline))
        diag_mean, diag_std, off_mean, off_std = (b.tolist() for b in baseline)
        fields[f"baseline_{kind}"] = Baseline(
            diag_mean=diag_mean, diag_std=diag_std, off_mean=off_mean, off_std=off_std
        )
        noise_norms = null[kind].norms
        if own.norms is not None and noise_norms is not None:
            mean, std = noise_norms.mean(-1), noise_norms.std(-1)
            fields[f"{kind}_norm"] = plain(own.norms)
            fields[f"{kind}_norm_z"] = plain(_z(own.norms, mean[:, None], std[:, None]))
            fields[f"baseline_{kind}_norm"] = NormBaseline(mean=mean.tolist(), std=std.tolist())
    return LayerDirections.model_validate(fields)


def top_interactions(layers: Sequence[LayerDirections], names: Sequence[str], n: int) -> list[Interaction]:
    """The ``n`` entries with the largest ``|z|`` over every layer, head and kind (qk, ov, mlp).

    Examples:
        >>> dirs = random_directions(3, 128, seed=1)
        >>> result = directions_through_weights("toy", dirs, layers="1", n_random=20, top=0)
        >>> [(row.kind, row.head, row.source, row.target, round(row.z, 2))
        ...  for row in top_interactions(result.layers, result.directions, 2)]
        [('mlp', None, 'd1', 'd1', 3.01), ('qk', 2, 'd1', 'd1', 2.93)]
    """
    if n <= 0:
        return []
    candidates: list[tuple[float, int, int | None, Kind, int, int, float]] = []
    for entry in layers:
        blocks: list[tuple[Kind, bool, Matrix | list[Matrix], Matrix | list[Matrix]]] = [
            ("qk", True, entry.qk, entry.qk_z),
            ("ov", True, entry.ov, entry.ov_z),
        ]
        if entry.mlp is not None and entry.mlp_z is not None:
            blocks.append(("mlp", False, entry.mlp, entry.mlp_z))
        for kind, per_head, values, zs in blocks:
            z = torch.tensor(zs).reshape(-1)
            value = torch.tensor(values).reshape(-1)
            k = len(names)
            for flat in z.abs().topk(min(n, z.numel())).indices.tolist():
                head, rest = divmod(flat, k * k)
                i, j = divmod(rest, k)
                row = (float(z[flat]), entry.layer, head if per_head else None, kind, i, j, float(value[flat]))
                candidates.append(row)
    candidates.sort(key=lambda row: -abs(row[0]))
    return [
        Interaction(layer=layer, head=head, kind=kind, i=i, j=j, source=names[i], target=names[j], value=value, z=z)
        for z, layer, head, kind, i, j, value in candidates[:n]
    ]


def resolve_layers(layers: Sequence[int] | str | None, n_layers: int, default: Sequence[int] = ()) -> list[int]:
    """Sorted layer indices from ``layers``: a list, or text such as ``all``, ``10-20``, ``0,3,-1``, ``every:4``.

    ``None`` means ``default`` (the layers the directions file names) or, when that is empty, all layers.
    Text is parsed by `mechscope.core.layers.parse_layers`; a list is resolved by
    `mechscope.core.layers.resolve_layers` (negative layers count from the end), then sorted.

    Examples:
        >>> resolve_layers("all", 4), resolve_layers("1-2", 4), resolve_layers([-1, 0], 4), resolve_layers("every:2", 4)
        ([0, 1, 2, 3], [1, 2], [0, 3], [0, 2, 3])
        >>> resolve_layers(None, 4, default=[2]), resolve_layers(None, 4)  # the directions file's layers, else all
        ([2], [0, 1, 2, 3])
        >>> resolve_layers([7], 4)
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: layer 7 is out of range: the model has 4 layers (0..3, or -4..-1 from the end)

    Raises:
        SiteError: a layer is out of range or the text is malformed (a backwards range such as ``5-2`` too).
    """
    if layers is None:
        layers = list(default) if default else "all"
    if isinstance(layers, str):
        return core_layers.parse_layers(layers, n_layers)
    return sorted(core_layers.resolve_layers([int(layer) for layer in layers], n_layers))


def random_directions(n: int, d_model: int, seed: int, scale: float = 1.0) -> Tensor:
    """``n`` Gaussian directions of norm ``scale`` in ``d_model`` dimensions, reproducible from ``seed``.

    Examples:
        >>> dirs = random_directions(2, 8, seed=0, scale=3.0)
        >>> dirs.shape, dirs.norm(dim=-1), torch.equal(dirs, random_directions(2, 8, seed=0, scale=3.0))
        (torch.Size([2, 8]), tensor([3.0000, 3.0000]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    return _unit(torch.randn(n, d_model, generator=generator)) * scale


def directions_through_weights(
    model: str | Path,
    directions: DirectionSet | Tensor | str | Path | Sequence[str | Path],
    *,
    layers: Sequence[int] | str | None = None,
    base: str | Path | None = None,
    n_random: int = 100,
    seed: int = 0,
    normalize: bool = True,
    top: int = 20,
    revision: str | None = None,
) -> DirectionsResult:
    """Push directions through the attention and MLP weights of a checkpoint (definitions: module docstring).

    Args:
        model: a checkpoint (folder with ``config.json``, HF cache folder or hub id; see `open_checkpoint`).
        directions: a `DirectionSet`, a ``[k, d_model]`` tensor, or directions file(s) (`load_directions`).
        layers: the layers whose weights read the directions (the directions are their input,
            ``resid_pre``): a list or ``all`` / ``10-20`` / ``0,3,-1``. Default: the layers the directions
            file names, else all.
        base: a base checkpoint of the same architecture; the result is then ``model - base``.
        n_random: number of random directions in the z-score baseline (at least 2).
        seed: seed of the random directions.
        normalize: scale the directions to unit norm first.
        top: rows of the top-interactions table.
        revision: hub revision of ``model`` and ``base``.

    Examples:
        Three random directions through layer 1 of the toy organism, and a difference of identical checkpoints:

        >>> dirs = random_directions(3, 128, seed=1)
        >>> result = directions_through_weights("toy", dirs, layers="1", n_random=20, top=3)
        >>> result.family, result.n_heads, [entry.layer for entry in result.layers], result.directions, len(result.top)
        ('llama', 4, [1], ['d0', 'd1', 'd2'], 3)
        >>> same = directions_through_weights("toy", dirs, base="toy", layers="0", n_random=10)
        >>> max(abs(row.value) for row in same.top)
        0.0

    Raises:
        InputError: directions of the wrong width, too few random directions, a base of another shape.
        SiteError: a layer out of range.
        ArchitectureError: an unsupported family (the message lists the supported ones).
        WeightFileError: an unreadable checkpoint or a missing tensor.
    """
    if n_random < 2:
        raise InputError(f"--random must be at least 2 (the z-score baseline needs a spread); got {n_random}")
    dirs = _as_set(directions)
    with open_checkpoint(model, revision=revision) as ckpt:
        skeleton = build_skeleton(ckpt)
        arch = skeleton.arch
        if dirs.d_model != arch.d_model:
            raise InputError(
                f"the directions have width {dirs.d_model} but {arch.family} has d_model {arch.d_model}; "
                "they were computed for another model"
            )
        chosen = resolve_layers(layers, arch.n_layers, dirs.layers)
        base_ckpt = open_checkpoint(base, revision=revision) if base is not None else None
        try:
            base_skeleton = _check_base(skeleton, base_ckpt) if base_ckpt is not None else None
            entries = []
            for layer in chosen:
                x = dirs.at(layer)
                if normalize:
                    x = _unit(x)
                scale = 1.0 if normalize else float(x.norm(dim=-1).mean())
                noise = random_directions(n_random, arch.d_model, seed, scale)
                weights = read_layer(ckpt, skeleton, layer)
                base_weights = (
                    read_layer(base_ckpt, base_skeleton, layer)
                    if base_ckpt is not None and base_skeleton is not None
                    else None
                )
                entries.append(analyze_layer(weights, x, noise, base_weights))
        finally:
            if base_ckpt is not None:
                base_ckpt.close()
    return DirectionsResult(
        model=str(model),
        base=None if base is None else str(base),
        family=arch.family,
        d_model=arch.d_model,
        n_heads=arch.n_heads,
        n_kv_heads=arch.n_kv_heads,
        head_dim=arch.head_dim,
        directions=list(dirs.names),
        normalized=normalize,
        n_random=n_random,
        seed=seed,
        layers=entries,
        top=top_interactions(entries, dirs.names, top),
    )


def _as_set(directions: DirectionSet | Tensor | str | Path | Sequence[str | Path]) -> DirectionSet:
    if isinstance(directions, DirectionSet):
        return directions
    if isinstance(directions, Tensor):
        return DirectionSet.from_tensor(directions)
    if isinstance(directions, str | Path):
        return load_directions([directions])
    return load_directions(list(directions))


def _check_base(skeleton: Skeleton, base: Checkpoint) -> Skeleton:
    other = build_skeleton(base)
    mine, theirs = skeleton.arch.summary(), other.arch.summary()
    differing = [key for key in mine if mine[key] != theirs[key]]
    if differing:
        key = differing[0]
        raise InputError(
            f"the base checkpoint has another architecture: {key} is {theirs[key]} there and {mine[key]} here"
        )
    return other
