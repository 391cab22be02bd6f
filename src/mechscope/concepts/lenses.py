"""Concept lenses: one linear probe per concept, stacked into one matrix so that scoring is one product.

For each of K concepts, a logistic probe separates that concept's activations from those of its siblings
(concepts with the same parent) and of a few random other concepts. `fit_lenses` fits the K probes together,
batched in torch, on standardised features, and folds the standardisation into ``W: [d, K]`` and ``b: [K]``:
``h @ W + b`` scores raw hidden states against every concept at once. A score is a logit (above 0 the probe
prefers the concept over its negatives); `calibrate` sets each concept's firing threshold on ordinary text.

Examples:
    >>> import torch
    >>> x = torch.cat([torch.randn(20, 8) + 3 * torch.eye(8)[k] for k in range(3)])
    >>> y = torch.arange(3).repeat_interleave(20)
    >>> lenses = fit_lenses(x, y, ["a", "b", "c"], ["a", "b", "c"], [[1, 2], [0, 2], [0, 1]], n_random=0)
    >>> lenses.scores(x).argmax(dim=-1).eq(y).float().mean().item() > 0.9
    True
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.concepts.lens_results import LensFitSummary, LensScore
from mechscope.errors import InputError
from mechscope.progress import track
from mechscope.storage.atomic import atomic_write_text
from mechscope.storage.tensors import load_tensors, save_tensors

FORMAT_VERSION = 1
KIND = "concept_lenses"
TENSORS_FILE = "lenses.safetensors"
META_FILE = "lenses.json"
#: Gathered training rows of one chunk of concepts are kept under this many bytes (float32).
CHUNK_BYTES = 1 << 30


@dataclass
class Lenses:
    """K concept lenses reading one site: ``scores(h) = h @ W + b``; a concept fires where its score > threshold.

    Attributes:
        W: ``[d, K]`` float32, one column per concept (standardisation folded in).
        b: ``[K]`` biases.
        threshold: ``[K]`` firing thresholds (0, the probes' own decision boundary, until `calibrate`).
        concept_ids, terms: the K concepts, in column order.
        site: the site the activations were read at (``resid_post.2``).
        model: the model they came from.
        auroc: per concept, the held-out AUROC (None: not evaluated).
        n_pos, n_neg: per concept, its positive and negative training rows.
        calibrated_fpr: the neutral-text false-positive rate the thresholds were set for (None: not calibrated).
        params: the fit's settings, for provenance.
    """

    W: Tensor
    b: Tensor
    threshold: Tensor
    concept_ids: list[str]
    terms: list[str]
    site: str = ""
    model: str = ""
    auroc: list[float | None] = field(default_factory=list)
    n_pos: list[int] = field(default_factory=list)
    n_neg: list[int] = field(default_factory=list)
    calibrated_fpr: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.concept_ids)
        if self.W.dim() != 2 or self.W.shape[1] != k or self.b.shape != (k,) or self.threshold.shape != (k,):
            shapes = f"{list(self.W.shape)}, {list(self.b.shape)}, {list(self.threshold.shape)}"
            raise InputError(f"{k} concepts need W [d, {k}], b [{k}] and threshold [{k}]; got {shapes}")
        if len(self.terms) != k:
            raise InputError(f"{len(self.terms)} terms for {k} concepts; give one term per concept")
        self.auroc = list(self.auroc) or [None] * k
        self.n_pos = list(self.n_pos) or [0] * k
        self.n_neg = list(self.n_neg) or [0] * k

    @property
    def n_concepts(self) -> int:
        """K, the number of lenses."""
        return len(self.concept_ids)

    @property
    def d_model(self) -> int:
        """The width of the activations the lenses read."""
        return int(self.W.shape[0])

    def index(self, concept_id: str) -> int:
        """The column of ``concept_id`` (`InputError` if there is none)."""
        try:
            return self.concept_ids.index(concept_id)
        except ValueError:
            raise InputError(f"no lens for concept '{concept_id}' among {self.n_concepts}") from None

    def to(self, device: str | torch.device) -> Lenses:
        """These lenses with their tensors on ``device``."""
        return replace(self, W=self.W.to(device), b=self.b.to(device), threshold=self.threshold.to(device))

    def scores(self, h: Tensor) -> Tensor:
        """Every concept's score on hidden states ``h: [..., d]`` → ``[..., K]`` (one matrix product).

        ``h`` is cast to float32 and moved to the lenses' device.
        """
        if h.shape[-1] != self.d_model:
            raise InputError(f"hidden states of width {h.shape[-1]} given to lenses of width {self.d_model}")
        result: Tensor = torch.addmm(self.b, h.reshape(-1, h.shape[-1]).to(self.W), self.W)
        return result.reshape(*h.shape[:-1], self.n_concepts)

    def margins(self, h: Tensor) -> Tensor:
        """``scores(h) - threshold``: positive where a concept fires."""
        return self.scores(h) - self.threshold

    def summary(self) -> LensFitSummary:
        """Per-concept scores and their aggregate, as a serialisable value."""
        thresholds = self.threshold.detach().cpu().tolist()
        scores = [
            LensScore(concept_id=cid, term=term, auroc=auc, threshold=thr, n_pos=pos, n_neg=neg)
            for cid, term, auc, thr, pos, neg in zip(
                self.concept_ids, self.terms, self.auroc, thresholds, self.n_pos, self.n_neg, strict=True
            )
        ]
        params = {k: v for k, v in self.params.items() if v is None or isinstance(v, int | float | str)}
        return LensFitSummary.of(scores, model=self.model, site=self.site, d_model=self.d_model, params=params,
                                 calibrated_fpr=self.calibrated_fpr)  # fmt: skip

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``lenses.safetensors`` (W, b, threshold) and ``lenses.json`` (metadata) into ``directory``.

        Each file is written atomically (the tensors first); the folder is created if needed. Returns it.
        """
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"'{folder}' is a file; give a folder to save the lenses in")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"W": self.W.float(), "b": self.b.float(), "threshold": self.threshold.float()}
        header = {"format_version": FORMAT_VERSION, "n_concepts": self.n_concepts, "d_model": self.d_model}
        save_tensors(folder / TENSORS_FILE, tensors, kind=KIND, meta=header, schema_version=FORMAT_VERSION)
        meta = {"format_version": FORMAT_VERSION, "kind": KIND, **self.summary().model_dump(mode="json")}
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        return folder


def load_lenses(directory: str | os.PathLike[str], *, device: str = "cpu") -> Lenses:
    """Read lenses written by `Lenses.save` (safetensors and JSON only; nothing is unpickled).

    Examples:
        >>> import tempfile
        >>> import torch
        >>> def rows(seed):  # 20 noisy rows around each of 3 directions of an 8-d space: concepts 0, 1, 2
        ...     g = torch.Generator().manual_seed(seed)
        ...     return torch.cat([torch.randn(20, 8, generator=g) + 2 * torch.eye(8)[k] for k in range(3)])
        >>> x, y, siblings = rows(0), torch.arange(3).repeat_interleave(20), [[1, 2], [0, 2], [0, 1]]
        >>> lenses = fit_lenses(x, y, ["a", "b", "c"], ["a", "b", "c"], siblings, n_random=0, site="resid_post.2")
        >>> folder = lenses.save(tempfile.mkdtemp())
        >>> sorted(path.name for path in folder.iterdir())
        ['lenses.json', 'lenses.safetensors']
        >>> back = load_lenses(folder)
        >>> torch.equal(back.W, lenses.W), back.terms, back.site
        (True, ['a', 'b', 'c'], 'resid_post.2')

    Raises:
        InputError: the folder or a file is missing, corrupt, of a newer format, or the two files disagree.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise InputError(f"no lenses at '{folder}' (not a folder); give the folder Lenses.save wrote")
    tensors_path, meta_path = folder / TENSORS_FILE, folder / META_FILE
    for path in (tensors_path, meta_path):
        if not path.is_file():
            raise InputError(f"no {path.name} in '{folder}'; give a folder written by Lenses.save")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta["format_version"] if meta.get("kind") == KIND else None
        summary = LensFitSummary.model_validate({k: v for k, v in meta.items() if k not in ("kind", "format_version")})
    except (ValueError, AttributeError, KeyError, UnicodeDecodeError) as error:  # ValidationError is a ValueError
        raise InputError(f"'{meta_path}' is corrupt ({type(error).__name__}); save the lenses again") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"'{meta_path}' is not lenses of format ≤ {FORMAT_VERSION} (got {version}); upgrade mechscope")
    try:
        stored = load_tensors(tensors_path, kind=KIND, what="concept lenses file", device=device).tensors
        W, b, threshold = stored["W"], stored["b"], stored["threshold"]
    except InputError:
        raise
    except Exception as error:  # a missing tensor, or a body cut short behind a sound header
        raise InputError(f"'{tensors_path}' is corrupt ({type(error).__name__}); save the lenses again") from None
    scores = summary.scores
    try:
        lenses = Lenses(W, b, threshold, concept_ids=[s.concept_id for s in scores], terms=[s.term for s in scores])
    except InputError as error:
        raise InputError(f"'{folder}': {TENSORS_FILE} and {META_FILE} disagree ({error}); save again") from None
    lenses.site, lenses.model, lenses.calibrated_fpr = summary.site, summary.model, summary.calibrated_fpr
    lenses.auroc, lenses.n_pos, lenses.n_neg = (
        [s.auroc for s in scores],
        [s.n_pos for s in scores],
        [s.n_neg for s in scores],
    )
    lenses.params = dict(summary.params)
    return lenses


# --------------------------------------------------------------------------- fitting


def standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation of ``x: [m, d]`` (constant dimensions get std 1).

    Examples:
        >>> standardization(torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]]))
        (tensor([ 2., 20.,  5.]), tensor([ 1., 10.,  1.]))
    """
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    floor = 1e-6 * float(std.max()) if std.numel() else 0.0
    return mean, torch.where(std > floor, std, torch.ones_like(std))


def fold_standardization(w: Tensor, c: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Fold ``((h - mean) / std) @ w + c`` into ``h @ W + b``; returns ``(W, b)``.

    ``W = w / std[:, None]`` and ``b = c - (mean / std) @ w``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> h = torch.randn(50, 4, generator=g) * 3 + 1
        >>> mean, std = standardization(h)
        >>> w, c = torch.randn(4, 2, generator=g), torch.randn(2, generator=g)  # a probe on standardised rows
        >>> W, b = fold_standardization(w, c, mean, std)
        >>> torch.allclose(((h - mean) / std) @ w + c, h @ W + b, atol=1e-5)  # the same scores on raw rows
        True
    """
    return w / std[:, None], c - (mean / std) @ w


def negative_concepts(siblings: Sequence[Sequence[int]], n_random: int, seed: int = 0) -> list[list[int]]:
    """Per concept, the concepts whose rows are its negatives: its siblings, then ``n_random`` random others.

    The random ones are drawn (seeded) from the concepts that are neither the concept nor its siblings.

    Examples:
        Two pairs of siblings (0 and 1, 2 and 3), and one random negative each from the other pair:

        >>> negative_concepts([[1], [0], [3], [2]], n_random=1)
        [[1, 3], [0, 3], [3, 1], [2, 1]]
    """
    k = len(siblings)
    rng = np.random.default_rng(seed)
    result = []
    for i, group in enumerate(siblings):
        chosen = list(dict.fromkeys(j for j in group if j != i))
        taken = {i, *chosen}
        want = min(n_random, k - len(taken))
        extra: list[int] = []
        while len(extra) < want:
            for j in rng.integers(0, k, size=2 * (want - len(extra)) + 4).tolist():
                if j not in taken and len(extra) < want:
                    taken.add(j)
                    extra.append(j)
        result.append(chosen + extra)
    return result


def fit_lenses(
    x: Tensor,
    y: Tensor,
    concept_ids: Sequence[str],
    terms: Sequence[str],
    siblings: Sequence[Sequence[int]],
    *,
    n_random: int = 20,
    l2: float = 1e-3,
    steps: int = 100,
    seed: int = 0,
    held_out: tuple[Tensor, Tensor] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    site: str = "",
    model: str = "",
    chunk_size: int = 512,
    max_negatives: int | None = 4096,
    background: Tensor | None = None,
    background_weight: float = 0.5,
) -> Lenses:
    """Fit K concept lenses, batched, from pooled activations ``x: [m, d]`` labelled ``y: [m]`` (concept index).

    Each probe is a logistic regression on the standardised features: positives are the concept's rows,
    negatives those of its siblings and of ``n_random`` random other concepts (seeded); both classes weigh
    0.5 in all; an L2 penalty ``l2 / 2 * |w|²`` acts on the standardised weights (not the bias). That is
    scikit-learn's ``LogisticRegression(C=1 / (l2 * n), class_weight="balanced")`` on the standardised rows,
    ``n`` the concept's rows. Concepts are fitted ``chunk_size`` at a time (fewer when their gathered rows
    would pass `CHUNK_BYTES`), by L-BFGS for ``steps`` iterations; one without positives or negatives gets a
    zero lens.

    Lenses that only saw pooled samples extrapolate on unrelated tokens' states (a function word, the first
    token), where their scores can be large. ``background`` rows (tokens that name no concept: the templates'
    other tokens, ordinary text) are negatives of every concept and take ``background_weight`` of the
    negative class's weight (all of it for a concept without other negatives).

    Args:
        siblings: per concept, the indices of its sibling concepts.
        held_out: ``(x_eval, y_eval)``: each concept's AUROC on them (positives: its rows; negatives: the rows
            of its siblings and random negatives), None where it has no positive or no negative there.
        device: where to fit (default: ``x``'s device); the lenses come back on the CPU.
        max_negatives: keep at most this many negative rows per concept (a seeded random subset).
        background: ``[n_b, d]`` rows that are negatives of every concept (a few thousand are plenty).
        background_weight: the share of the negative weight the background rows take, in [0, 1].

    Examples:
        Three concepts, each one's negatives its two siblings, scored on rows held out from the fit:

        >>> import torch
        >>> def rows(seed):  # 20 noisy rows around each of 3 directions of an 8-d space: concepts 0, 1, 2
        ...     g = torch.Generator().manual_seed(seed)
        ...     return torch.cat([torch.randn(20, 8, generator=g) + 2 * torch.eye(8)[k] for k in range(3)])
        >>> x, y, siblings = rows(0), torch.arange(3).repeat_interleave(20), [[1, 2], [0, 2], [0, 1]]
        >>> lenses = fit_lenses(x, y, ["toy:a", "toy:b", "toy:c"], ["a", "b", "c"], siblings, n_random=0,
        ...                     held_out=(rows(1), y), site="resid_post.2")
        >>> lenses.n_concepts, lenses.d_model, lenses.n_pos, lenses.n_neg
        (3, 8, [20, 20, 20], [40, 40, 40])
        >>> [round(auroc, 3) for auroc in lenses.auroc]
        [0.9, 0.997, 0.851]

    Raises:
        InputError: shapes or labels do not fit together (or ``background`` does not fit ``x``).
    """
    k = len(concept_ids)
    _check_fit_inputs(x, y, k, terms, siblings, l2, steps)
    where = torch.device(device) if device is not None else x.device
    x, y = x.detach().to(where, torch.float32), y.detach().to(where, torch.long)
    mean, std = standardization(x)
    z = (x - mean) / std
    if background is not None and (background.dim() != 2 or background.shape[1] != x.shape[1]):
        raise InputError(f"background must be rows [n, {x.shape[1]}]; got {list(background.shape)}")
    if not 0.0 <= background_weight <= 1.0:
        raise InputError(f"background_weight is a share of the negatives' weight, in [0, 1]; got {background_weight}")
    zb = None if background is None or not len(background) else (background.detach().to(where).float() - mean) / std
    share = background_weight if zb is not None else 0.0
    rows = _rows_by_concept(y, k)
    negatives = negative_concepts(siblings, n_random, seed)
    generator = torch.Generator().manual_seed(seed)
    w_all = torch.zeros(z.shape[1], k, device=where)
    c_all = torch.zeros(k, device=where)
    n_pos = [len(r) for r in rows]
    n_neg = [0] * k
    for chunk in track(
        _chunks(rows, negatives, z.shape[1], chunk_size, max_negatives), "fitting lenses", enabled=progress
    ):
        members, idx, label, weight, bg = _gather(chunk, rows, negatives, max_negatives, generator, n_neg, share)
        if not members:
            continue
        w, c = _fit_chunk(z[idx.to(where)], label.to(where), weight.to(where), l2, steps, zb, bg.to(where))
        w_all[:, members] = w.T
        c_all[members] = c
    if skipped := sum(1 for i in range(k) if n_pos[i] == 0 or (n_neg[i] == 0 and zb is None)):
        warnings.warn(f"{skipped} of {k} concepts lack positive or negative rows; their lenses are 0", stacklevel=2)
    W, b = fold_standardization(w_all, c_all, mean, std)
    lenses = Lenses(W=W.cpu(), b=b.cpu(), threshold=torch.zeros(k), concept_ids=list(concept_ids), terms=list(terms))
    lenses.site, lenses.model, lenses.n_pos, lenses.n_neg = site, model, n_pos, n_neg
    n_b = 0 if zb is None else len(zb)
    lenses.params = dict(l2=l2, steps=steps, n_random=n_random, seed=seed, n_rows=len(x), n_background=n_b)
    lenses.params["background_weight"] = share
    if held_out is not None:
        lenses.auroc = held_out_auroc(lenses, held_out[0], held_out[1], negatives)
    return lenses


def held_out_auroc(
    lenses: Lenses, x_eval: Tensor, y_eval: Tensor, negatives: Sequence[Sequence[int]]
) -> list[float | None]:
    """Per concept, the AUROC of its lens on ``x_eval``: its rows against those of its ``negatives`` concepts.

    None where the concept has no positive or no negative row in ``x_eval``.

    Examples:
        >>> import torch
        >>> def rows(seed):  # 20 noisy rows around each of 3 directions of an 8-d space: concepts 0, 1, 2
        ...     g = torch.Generator().manual_seed(seed)
        ...     return torch.cat([torch.randn(20, 8, generator=g) + 2 * torch.eye(8)[k] for k in range(3)])
        >>> x, y, siblings = rows(0), torch.arange(3).repeat_interleave(20), [[1, 2], [0, 2], [0, 1]]
        >>> lenses = fit_lenses(x, y, ["a", "b", "c"], ["a", "b", "c"], siblings, n_random=0, site="resid_post.2")
        >>> x_eval = rows(1)
        >>> [round(auroc, 3) for auroc in held_out_auroc(lenses, x_eval, y, siblings)]
        [0.9, 0.997, 0.851]
        >>> held_out_auroc(lenses, x_eval[:20], y[:20], siblings)  # only concept 0's rows: no AUROC at all
        [None, None, None]
    """
    from sklearn import config_context
    from sklearn.metrics import roc_auc_score

    k = lenses.n_concepts
    if x_eval.dim() != 2 or y_eval.shape != (x_eval.shape[0],):
        raise InputError(f"held_out must be (x [m, d], y [m]); got {list(x_eval.shape)} and {list(y_eval.shape)}")
    rows = [r.numpy() for r in _rows_by_concept(y_eval.cpu().long(), k)]
    h = x_eval.detach().cpu().float()
    W, b = lenses.W.cpu(), lenses.b.cpu()
    result: list[float | None] = []
    step = max(1, (1 << 24) // max(1, x_eval.shape[0]))
    with config_context(assume_finite=True, skip_parameter_validation=True):  # K calls: skip sklearn's checks
        for start in range(0, k, step):
            stop = min(k, start + step)
            scores = torch.addmm(b[start:stop], h, W[:, start:stop]).numpy()
            for i in range(start, stop):
                pos = rows[i]
                neg = np.concatenate([rows[j] for j in negatives[i]]) if negatives[i] else np.zeros(0, np.int64)
                if len(pos) == 0 or len(neg) == 0:
                    result.append(None)
                    continue
                labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
                column = scores[:, i - start]
                result.append(float(roc_auc_score(labels, np.r_[column[pos], column[neg]])))
    return result


def calibrate(lenses: Lenses, neutral: Tensor, fpr: float = 0.01) -> Lenses:
    """Lenses whose thresholds fire on a fraction ``fpr`` of ordinary text's tokens.

    ``neutral: [n, d]`` are per-token hidden states of ordinary text (no particular concept) at the lenses'
    site (`mechscope.concepts.monitor.token_states` gives them). Each concept's threshold becomes the
    ``1 - fpr`` quantile of its scores on those rows (linear interpolation, as ``numpy.quantile``), so that
    it exceeds its threshold on at most about ``fpr`` of neutral tokens. Use at least ``1 / fpr`` rows,
    ideally many more: with fewer, the threshold is the largest neutral score. Returns new `Lenses`.

    Examples:
        >>> import torch
        >>> def rows(seed):  # 20 noisy rows around each of 3 directions of an 8-d space: concepts 0, 1, 2
        ...     g = torch.Generator().manual_seed(seed)
        ...     return torch.cat([torch.randn(20, 8, generator=g) + 2 * torch.eye(8)[k] for k in range(3)])
        >>> x, y, siblings = rows(0), torch.arange(3).repeat_interleave(20), [[1, 2], [0, 2], [0, 1]]
        >>> lenses = fit_lenses(x, y, ["a", "b", "c"], ["a", "b", "c"], siblings, n_random=0, site="resid_post.2")
        >>> neutral = torch.randn(1000, 8, generator=torch.Generator().manual_seed(2))  # "ordinary text"
        >>> calibrated = calibrate(lenses, neutral, fpr=0.05)
        >>> calibrated.calibrated_fpr, (calibrated.margins(neutral) > 0).float().mean(dim=0)
        (0.05, tensor([0.0500, 0.0500, 0.0500]))

    Raises:
        InputError: ``fpr`` outside (0, 1), or ``neutral`` of the wrong shape or empty.
    """
    if not 0.0 < fpr < 1.0:
        raise InputError(f"fpr must be between 0 and 1 (e.g. 0.01); got {fpr}")
    if neutral.dim() != 2 or neutral.shape[0] == 0 or neutral.shape[1] != lenses.d_model:
        raise InputError(f"neutral must be hidden states [n, {lenses.d_model}] with n > 0; got {list(neutral.shape)}")
    n = int(neutral.shape[0])
    if n < 1 / fpr:
        warnings.warn(f"{n} neutral rows cannot resolve fpr={fpr}; thresholds are the largest scores", stacklevel=2)
    position = (1.0 - fpr) * (n - 1)
    low = math.floor(position)
    high, frac = min(low + 1, n - 1), position - low
    thresholds = torch.empty(lenses.n_concepts)
    h = neutral.to(lenses.W)
    step = max(1, (1 << 24) // n)
    for start in range(0, lenses.n_concepts, step):
        cols = slice(start, min(lenses.n_concepts, start + step))
        ordered = torch.addmm(lenses.b[cols], h, lenses.W[:, cols]).sort(dim=0).values
        thresholds[cols] = (ordered[low] + (ordered[high] - ordered[low]) * frac).cpu()
    params = {**lenses.params, "n_neutral": n}
    return replace(lenses, threshold=thresholds.to(lenses.W.device), calibrated_fpr=fpr, params=params)


# --------------------------------------------------------------------------- internals


def _check_fit_inputs(
    x: Tensor, y: Tensor, k: int, terms: Sequence[str], siblings: Sequence[Sequence[int]], l2: float, steps: int
) -> None:
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise InputError(f"x must be [m, d] and y [m]; got {list(x.shape)} and {list(y.shape)}")
    if x.shape[0] == 0 or k == 0:
        raise InputError("no rows or no concepts to fit lenses on; give activations of at least two concepts")
    if len(terms) != k or len(siblings) != k:
        raise InputError(f"{k} concept ids need {k} terms and {k} sibling lists; got {len(terms)} and {len(siblings)}")
    if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= k:
        raise InputError(f"y must hold concept indices 0..{k - 1}; got values {int(y.min())}..{int(y.max())}")
    if any(j < 0 or j >= k for group in siblings for j in group):
        raise InputError(f"sibling indices must be concept indices 0..{k - 1}")
    if l2 < 0 or steps < 1:
        raise InputError(f"l2 must be ≥ 0 and steps ≥ 1; got l2={l2}, steps={steps}")


def _rows_by_concept(y: Tensor, k: int) -> list[Tensor]:
    order = torch.argsort(y, stable=True).cpu()
    counts = torch.bincount(y.cpu(), minlength=k).tolist()
    return list(torch.split(order, counts))


def _chunks(
    rows: list[Tensor], negatives: list[list[int]], d: int, chunk_size: int, max_negatives: int | None
) -> list[list[int]]:
    """Consecutive groups of concepts of at most ``chunk_size``, whose padded gathered rows fit `CHUNK_BYTES`."""
    chunks: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for i in range(len(rows)):
        n = sum(len(rows[j]) for j in negatives[i])
        width = len(rows[i]) + (n if max_negatives is None else min(n, max_negatives))
        if current and (len(current) >= chunk_size or (len(current) + 1) * max(widest, width) * d * 4 > CHUNK_BYTES):
            chunks.append(current)
            current, widest = [], 0
        current.append(i)
        widest = max(widest, width)
    if current:
        chunks.append(current)
    return chunks


def _gather(
    chunk: list[int], rows: list[Tensor], negatives: list[list[int]], max_negatives: int | None,
    generator: torch.Generator, n_neg: list[int], share: float,
) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """A chunk's fitted concepts, padded row indices ``[C, R]``, labels, weights (0 on padding), background weights.

    Positives weigh 0.5 in all, negatives 0.5: ``1 - share`` of it on the concept negatives, ``share`` on the
    background rows (all of it when the concept has no other negatives; ``share`` 0: no background).
    """
    members, pairs = [], []
    for i in chunk:
        neg = torch.cat([rows[j] for j in negatives[i]] or [torch.zeros(0, dtype=torch.long)])
        if max_negatives is not None and len(neg) > max_negatives:
            neg = neg[torch.randperm(len(neg), generator=generator)[:max_negatives]]
        n_neg[i] = len(neg)
        if len(rows[i]) and (len(neg) or share > 0):
            members.append(i)
            pairs.append((rows[i], neg))
    width = max((len(p) + len(n) for p, n in pairs), default=0)
    shape = (len(pairs), width)
    idx, label, weight = torch.zeros(shape, dtype=torch.long), torch.zeros(shape), torch.zeros(shape)
    background = torch.zeros(len(pairs))
    for r, (pos, neg) in enumerate(pairs):
        p, n = len(pos), len(neg)
        on_background = (share if n else 1.0) if share > 0 else 0.0
        idx[r, : p + n] = torch.cat([pos, neg])
        label[r, :p], weight[r, :p] = 1.0, 0.5 / p
        weight[r, p : p + n] = 0.5 * (1.0 - on_background) / max(n, 1)
        background[r] = 0.5 * on_background
    return members, idx, label, weight, background


def _fit_chunk(
    z: Tensor, label: Tensor, weight: Tensor, l2: float, steps: int, zb: Tensor | None, background: Tensor
) -> tuple[Tensor, Tensor]:
    """Logistic probes for ``C`` concepts at once: ``z [C, R, d]`` rows, ``label``/``weight`` ``[C, R]``.

    Minimises ``sum_c (sum_r weight * logloss + l2 / 2 * |w_c|²)`` plus, with background rows ``zb [n_b, d]``,
    ``background[c]`` times their mean logloss as negatives; the concepts do not interact, so the sum's
    minimum is every concept's own minimum. Returns ``w [C, d]`` and ``c [C]``.
    """
    w = torch.zeros(z.shape[0], z.shape[2], device=z.device, requires_grad=True)
    c = torch.zeros(z.shape[0], device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, c], lr=1.0, max_iter=steps, history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("crd,cd->cr", z, w) + c[:, None]
        loss = (weight * F.binary_cross_entropy_with_logits(logits, label, reduction="none")).sum()
        if zb is not None:  # the shared rows need no gather: [n_b, C] logits, logloss of label 0
            loss = loss + (background * F.softplus(zb @ w.T + c).mean(dim=0)).sum()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), c.detach()
