"""Baseline concept readers: a nearest-centroid reader and a linear softmax probe, the interpreter's yardsticks.

Both read ``[m, n_layers, d]`` activations (or ``[m, d]``), flatten them to ``[m, n_layers·d]`` and, by
default, standardise every feature with the mean and population standard deviation of the training rows
(a constant feature keeps a scale of 1). A class with no training row is never predicted: its score is
``-inf`` and its probability 0.

* `NearestCentroid` scores a sample by its cosine similarity (or minus its euclidean distance) to each
  class's centroid, the mean of the class's standardised training rows.
* `LinearProbe` is multinomial logistic regression, ``mean CE + l2/2·‖W‖²`` (bias not penalised), fitted in
  torch: full-batch L-BFGS for small problems, minibatch AdamW for large ones (scikit-learn's solver is too
  slow for thousands of classes).

Examples:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x = torch.cat([torch.randn(20, 2, 8) + 3 * torch.eye(8)[k] for k in range(4)])
    >>> y = torch.arange(4).repeat_interleave(20)
    >>> NearestCentroid().fit(x, y).predict(x).eq(y).float().mean().item() > 0.9
    True
    >>> probe = LinearProbe().fit(x, y, n_classes=5)  # class 4 has no sample: never predicted
    >>> probe.probabilities(x)[:, 4].max().item()
    0.0
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.errors import InputError

Metric = Literal["cosine", "euclidean"]
Optimizer = Literal["auto", "lbfgs", "adamw"]
#: `LinearProbe` with ``optimizer="auto"`` uses L-BFGS up to this many weights (features × classes).
LBFGS_MAX_WEIGHTS = 5_000_000
#: Rows scored (or summed, in a full-batch L-BFGS step) at once.
CHUNK_ROWS = 4096


def flatten(x: Tensor) -> Tensor:
    """``[m, n_layers, d]`` or ``[m, d]`` activations as ``[m, n_layers·d]`` (float64 stays, else float32).

    Examples:
        >>> import torch
        >>> flatten(torch.zeros(5, 3, 4)).shape  # 3 layers of width 4, side by side
        torch.Size([5, 12])
        >>> flatten(torch.zeros(5, 4, dtype=torch.float16)).dtype, flatten(torch.zeros(5, 4, dtype=torch.float64)).dtype
        (torch.float32, torch.float64)
    """
    if x.ndim not in (2, 3):
        raise InputError(f"activations must be [m, n_layers, d] or [m, d]; got shape {tuple(x.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).to(dtype)


def _labels(x: Tensor, y: Tensor, n_classes: int | None) -> tuple[Tensor, Tensor, int]:
    """Checked ``(flat x, y, K)``."""
    flat = flatten(x)
    if flat.shape[0] == 0:
        raise InputError("no training samples (m = 0); give at least one sample per class to read")
    if y.ndim != 1 or y.shape[0] != flat.shape[0]:
        raise InputError(f"y must be [m] with m = {flat.shape[0]} (one label per sample); got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"y must hold integer class indices; got {y.dtype}")
    if not torch.isfinite(flat).all():
        raise InputError("the activations hold NaN or infinite values; recompute or drop those samples")
    labels = y.long().cpu()
    k = int(labels.max()) + 1 if n_classes is None else n_classes
    if k < 2:
        raise InputError(f"a reader needs K >= 2 classes; got K = {k}")
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise InputError(f"labels must lie in 0..{k - 1}; got {int(labels.min())}..{int(labels.max())}")
    return flat, labels, k


def _moments(flat: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """Per-feature mean and population standard deviation (1 where constant), or 0 and 1."""
    if not standardize:
        return torch.zeros(flat.shape[1], dtype=flat.dtype), torch.ones(flat.shape[1], dtype=flat.dtype)
    var, mean = torch.var_mean(flat, dim=0, correction=0)
    std = var.sqrt()
    return mean, torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))


class _Reader:
    """What both readers share: the standardisation, the present classes and the width checks."""

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.present = torch.zeros(0, dtype=torch.bool)
        self.n_classes = 0

    def _fit_moments(self, flat: Tensor, labels: Tensor, k: int, standardize: bool) -> None:
        self.mean, self.std = _moments(flat, standardize)
        self.n_classes = k
        self.present = torch.bincount(labels, minlength=k) > 0

    def _flat(self, x: Tensor) -> Tensor:
        """``x`` flattened, once it is known to have the fitted width."""
        if self.mean is None or self.std is None:
            raise InputError("this reader is not fitted; call fit(x, y) first")
        flat = flatten(x)
        if flat.shape[1] != self.mean.shape[0]:
            raise InputError(f"the reader was fitted on {self.mean.shape[0]} features; got {flat.shape[1]}")
        return flat

    def _z(self, rows: Tensor, device: torch.device | None = None) -> Tensor:
        """Standardised ``rows`` of flat features (standardised chunk by chunk, so x is never copied whole)."""
        assert self.mean is not None and self.std is not None
        mean, std = self.mean.to(device or rows.device), self.std.to(device or rows.device)
        return (rows.to(mean.device, mean.dtype) - mean) / std

    def _expand(self, compact: Tensor) -> Tensor:
        """``[m, P]`` scores of the present classes as ``[m, K]``, ``-inf`` for the absent ones."""
        full = compact.new_full((compact.shape[0], self.n_classes), -math.inf)
        full[:, self.present] = compact
        return full


class NearestCentroid(_Reader):
    """Nearest-centroid reader: class centroids of standardised, flattened features.

    Args:
        metric: ``"cosine"`` (score: cosine similarity to the centroid) or ``"euclidean"`` (score: minus the
            euclidean distance).
        standardize: standardise features with the training rows' mean and standard deviation first.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.cat([torch.randn(10, 2, 8) + 3 * torch.eye(8)[k] for k in range(3)])  # 3 classes, 2 layers
        >>> y = torch.arange(3).repeat_interleave(10)
        >>> reader = NearestCentroid().fit(x, y, n_classes=4)  # class 3 has no sample
        >>> reader.predict(x[[0, 10, 20]]).tolist()
        [0, 1, 2]
        >>> reader.scores(x[:1]).round(decimals=2)  # cosine to each centroid; -inf: never predicted
        tensor([[ 0.6200, -0.3700, -0.2900,    -inf]])
    """

    def __init__(self, metric: Metric = "cosine", standardize: bool = True) -> None:
        super().__init__()
        if metric not in ("cosine", "euclidean"):
            raise InputError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")
        self.metric: Metric = metric
        self.standardize = standardize
        self.centroids: Tensor | None = None

    def fit(self, x: Tensor, y: Tensor, n_classes: int | None = None) -> NearestCentroid:
        """Compute the centroids of ``x`` ``[m, n_layers, d]`` by class ``y`` ``[m]`` (K = ``n_classes``).

        Raises:
            InputError: empty data, shapes that disagree, non-finite features, labels out of range, K < 2.
        """
        flat, labels, k = _labels(x, y, n_classes)
        self._fit_moments(flat, labels, k, self.standardize)
        assert self.mean is not None and self.std is not None
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros(k, flat.shape[1], dtype=flat.dtype).index_add_(0, labels, flat)
        means = sums[self.present] / counts[self.present].unsqueeze(1).to(flat.dtype)
        self.centroids = (means - self.mean) / self.std
        return self

    def scores(self, x: Tensor, batch_size: int = CHUNK_ROWS) -> Tensor:
        """``[m, K]`` similarities (cosine, or minus the euclidean distance); ``-inf`` for absent classes."""
        features = self._flat(x)
        assert self.centroids is not None
        centroids = F.normalize(self.centroids, dim=1) if self.metric == "cosine" else self.centroids
        parts = []
        for start in range(0, features.shape[0], batch_size):
            chunk = self._z(features[start : start + batch_size])
            if self.metric == "cosine":
                parts.append(F.normalize(chunk, dim=1) @ centroids.T)
            else:
                parts.append(-torch.cdist(chunk, centroids, compute_mode="donot_use_mm_for_euclid_dist"))
        compact = torch.cat(parts) if parts else features.new_zeros(0, centroids.shape[0])
        return self._expand(compact)

    def predict(self, x: Tensor) -> Tensor:
        """``[m]`` the best-scored class of each sample."""
        return self.scores(x).argmax(dim=1)


class LinearProbe(_Reader):
    """Multinomial logistic regression on flattened, standardised features, fitted in torch.

    Minimises ``mean cross-entropy + l2/2·‖W‖²`` over the classes present in training (the bias is not
    penalised). With ``l2 = 1/(C·m)`` this is scikit-learn's ``LogisticRegression(C=C)`` objective.

    Args:
        l2: the L2 penalty on the weights.
        optimizer: ``"lbfgs"`` (full batch, strong-Wolfe line search, up to ``max_iter`` iterations),
            ``"adamw"`` (minibatches of ``batch_size``, ``epochs`` epochs, cosine-annealed ``lr``; its
            decoupled decay is off, the penalty is in the loss) or ``"auto"`` (L-BFGS up to
            `LBFGS_MAX_WEIGHTS` weights, else AdamW).
        seed: seeds the minibatch order (L-BFGS from zero weights is deterministic).
        device: where to fit; the fitted probe lives on the CPU.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.cat([torch.randn(10, 2, 8) + 3 * torch.eye(8)[k] for k in range(3)])  # 3 classes, 2 layers
        >>> y = torch.arange(3).repeat_interleave(10)
        >>> probe = LinearProbe(l2=0.1).fit(x, y, n_classes=4)  # class 3 has no sample
        >>> probe.predict(x[[0, 10, 20]]).tolist()
        [0, 1, 2]
        >>> [round(p, 2) for p in probe.probabilities(x[:1])[0].tolist()]  # class 3: probability 0
        [0.93, 0.03, 0.04, 0.0]
    """

    def __init__(
        self,
        l2: float = 1e-3,
        optimizer: Optimizer = "auto",
        max_iter: int = 200,
        epochs: int = 30,
        lr: float = 1e-2,
        batch_size: int = 1024,
        seed: int = 0,
        device: str | torch.device = "cpu",
        standardize: bool = True,
    ) -> None:
        super().__init__()
        if optimizer not in ("auto", "lbfgs", "adamw"):
            raise InputError(f"unknown optimizer {optimizer!r}; use 'auto', 'lbfgs' or 'adamw'")
        if l2 < 0 or max_iter < 1 or epochs < 1 or lr <= 0 or batch_size < 1:
            raise InputError("l2 must be >= 0 and max_iter, epochs, lr and batch_size positive")
        self.l2, self.optimizer, self.max_iter, self.epochs = l2, optimizer, max_iter, epochs
        self.lr, self.batch_size, self.seed = lr, batch_size, seed
        self.device = torch.device(device)
        self.standardize = standardize
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def fit(self, x: Tensor, y: Tensor, n_classes: int | None = None) -> LinearProbe:
        """Fit on ``x`` ``[m, n_layers, d]`` and ``y`` ``[m]`` (K = ``n_classes``, default ``max(y) + 1``).

        Raises:
            InputError: empty data, shapes that disagree, non-finite features, labels out of range, K < 2.
        """
        flat, labels, k = _labels(x, y, n_classes)
        self._fit_moments(flat, labels, k, self.standardize)
        features = flat
        compact = torch.cumsum(self.present.long(), 0)[labels] - 1  # labels among the present classes
        n_present = int(self.present.sum())
        weight = torch.zeros(features.shape[1], n_present, device=self.device, requires_grad=True)
        bias = torch.zeros(n_present, device=self.device, requires_grad=True)
        if n_present > 1:
            method = self.optimizer
            if method == "auto":
                method = "lbfgs" if weight.numel() <= LBFGS_MAX_WEIGHTS else "adamw"
            if method == "lbfgs":
                self._lbfgs(features, compact, weight, bias)
            else:
                self._adamw(features, compact, weight, bias)
        self.weight, self.bias = weight.detach().cpu(), bias.detach().cpu()
        return self

    def _penalty(self, weight: Tensor) -> Tensor:
        return 0.5 * self.l2 * weight.pow(2).sum()

    def _lbfgs(self, features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> None:
        optimizer = torch.optim.LBFGS(
            [weight, bias], lr=1.0, max_iter=self.max_iter, history_size=10, line_search_fn="strong_wolfe"
        )
        m = features.shape[0]

        def closure() -> float:
            optimizer.zero_grad()
            total = 0.0
            for start in range(0, m, CHUNK_ROWS):
                chunk = self._z(features[start : start + CHUNK_ROWS], self.device).float()
                target = labels[start : start + CHUNK_ROWS].to(self.device)
                loss = F.cross_entropy(chunk @ weight + bias, target, reduction="sum") / m
                loss.backward()  # type: ignore[no-untyped-call]
                total += float(loss.detach())
            penalty = self._penalty(weight)
            penalty.backward()  # type: ignore[no-untyped-call]
            return total + float(penalty.detach())

        optimizer.step(closure)  # type: ignore[no-untyped-call]

    def _adamw(self, features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> None:
        optimizer = torch.optim.AdamW([weight, bias], lr=self.lr, weight_decay=0.0)
        steps_per_epoch = math.ceil(features.shape[0] / self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed)
        for _epoch in range(self.epochs):
            order = torch.randperm(features.shape[0], generator=generator)
            for start in range(0, features.shape[0], self.batch_size):
                rows = order[start : start + self.batch_size]
                chunk, target = self._z(features[rows], self.device).float(), labels[rows].to(self.device)
                loss = F.cross_entropy(chunk @ weight + bias, target) + self._penalty(weight)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                schedule.step()

    def logits(self, x: Tensor, batch_size: int = CHUNK_ROWS) -> Tensor:
        """``[m, K]`` logits; ``-inf`` for classes absent from training."""
        features = self._flat(x)
        if self.weight is None or self.bias is None:
            raise InputError("this reader is not fitted; call fit(x, y) first")
        weight, bias = self.weight, self.bias
        parts = [
            self._z(features[start : start + batch_size]).float() @ weight + bias
            for start in range(0, len(features), batch_size)
        ]
        return self._expand(torch.cat(parts) if parts else weight.new_zeros(0, weight.shape[1]))

    def probabilities(self, x: Tensor) -> Tensor:
        """``[m, K]`` softmax probabilities (rows sum to 1; 0 for classes absent from training)."""
        return torch.softmax(self.logits(x), dim=1)

    def predict(self, x: Tensor) -> Tensor:
        """``[m]`` the most probable class of each sample."""
        return self.logits(x).argmax(dim=1)
