"""Training the concept interpreter: standardisation, augmentation of rare concepts, AdamW with a cosine schedule.

`train_interpreter` fits an `Interpreter` on ``x`` ``[m, n_layers, d]`` and concept labels ``y`` ``[m]``:

* the input standardisation is the per-feature mean and population standard deviation of the real training
  rows (a constant feature keeps a scale of 1);
* concepts with fewer than ``augment_below`` samples get ``augment`` synthetic samples each, drawn from
  ``N(mean_k, v_k)`` with the encyclopedia's running statistics, where ``v_k = (count_k·variance_k + pooled) /
  count_k`` shrinks the concept's own (population) variance towards the pooled within-concept variance of the
  concepts with two or more samples (a concept seen once has variance 0; it takes the pooled one);
* AdamW (``lr``, ``weight_decay``), `torch.optim.lr_scheduler.CosineAnnealingLR` over all steps, a fresh
  shuffle every epoch, cross-entropy (category plus concept cross-entropy for the hierarchical variant), and
  bfloat16 autocast on CUDA only (plain float32 on the CPU, where a seed gives the same model every time).

Examples:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x = torch.cat([torch.randn(30, 2, 8) + 3 * torch.eye(8)[k] for k in range(3)])
    >>> y = torch.arange(3).repeat_interleave(30)
    >>> config = InterpreterConfig(d_model=16, heads=2, n_layers_encoder=1, epochs=20, batch_size=16)
    >>> model, log = train_interpreter(x, y, concept_ids=["a", "b", "c"], category=["x", "x", "y"],
    ...                                layers=[1, 2], config=config)
    >>> log.epochs, model.predict(x).eq(y).float().mean().item() > 0.9
    (20, True)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.concepts.interpreter import Interpreter, InterpreterConfig
from mechscope.concepts.interpreter_results import TrainingLog
from mechscope.errors import InputError
from mechscope.progress import bar

#: Synthetic samples per rare concept when statistics are given and ``augment`` is None.
DEFAULT_AUGMENT = 4
#: Training data is moved to a CUDA device whole when it is at most this many bytes.
DEVICE_DATA_BYTES = 4 << 30
#: Rows per chunk when the standardisation is summed (float64).
MOMENT_ROWS = 8192


def _checked(x: Tensor, y: Tensor, n_concepts: int) -> tuple[Tensor, Tensor]:
    if x.ndim == 2:
        x = x.unsqueeze(1)
    if x.ndim != 3:
        raise InputError(f"x must be [m, n_layers, d] activations; got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("no training samples (m = 0); gather samples of the concepts first")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"y must be [m] with m = {x.shape[0]} (one concept per sample); got {list(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"y must hold integer concept indices; got {y.dtype}")
    labels = y.long().cpu()
    if int(labels.min()) < 0 or int(labels.max()) >= n_concepts:
        raise InputError(
            f"concept indices must lie in 0..{n_concepts - 1}; got {int(labels.min())}..{int(labels.max())}"
        )
    features = x.float().cpu()
    if not torch.isfinite(features).all():
        raise InputError("x holds NaN or infinite values; recompute or drop those samples")
    return features, labels


def standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and population standard deviation ``[n_layers, d]`` of ``x``, summed in float64.

    A (near-)constant feature gets a standard deviation of 1.
    """
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    squares = torch.zeros(x.shape[1:], dtype=torch.float64)
    for start in range(0, x.shape[0], MOMENT_ROWS):
        chunk = x[start : start + MOMENT_ROWS].double()
        total += chunk.sum(0)
        squares += chunk.pow(2).sum(0)
    mean = total / x.shape[0]
    std = (squares / x.shape[0] - mean.pow(2)).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-6 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


def synthesize(
    mean: Tensor, variance: Tensor, count: Tensor, per_concept: int, below: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``per_concept`` synthetic samples ``[n, n_layers, d]`` (with labels) for every concept with count < ``below``.

    A concept is drawn from ``N(mean_k, (count_k·variance_k + pooled)/count_k)`` (diagonal), ``pooled`` being the
    within-concept variance pooled over concepts with count >= 2 (0 if there are none). Concepts with count 0
    have no statistics and get no samples.
    """
    counts = count.long().cpu()
    rare = torch.nonzero((counts >= 1) & (counts < below)).flatten()
    shape = tuple(mean.shape[1:])
    if per_concept == 0 or rare.numel() == 0:
        return torch.zeros(0, *shape), torch.zeros(0, dtype=torch.long)
    variance = torch.nan_to_num(variance.float().cpu(), nan=0.0).clamp_min(0.0)
    several = counts >= 2
    if bool(several.any()):
        weights = counts.where(several, torch.zeros_like(counts)).double()
        pooled = torch.einsum("k,k...->...", weights, variance.double()) / float((weights - 1).clamp_min(0).sum())
    else:
        pooled = torch.zeros(shape, dtype=torch.float64)
    n = counts[rare].double().view(-1, *([1] * len(shape)))
    spread = ((n * variance[rare].double() + pooled) / n).sqrt().float()
    noise = torch.randn(rare.numel(), per_concept, *shape, generator=generator)
    samples = mean[rare].float().cpu().unsqueeze(1) + spread.unsqueeze(1) * noise
    labels = rare.repeat_interleave(per_concept)
    return samples.reshape(-1, *shape), labels


def _statistics(
    mean: Tensor | None, variance: Tensor | None, count: Tensor | None, shape: tuple[int, int, int], labels: Tensor
) -> tuple[Tensor, Tensor, Tensor] | None:
    if mean is None and variance is None:
        return None
    if mean is None or variance is None:
        raise InputError("augmentation needs both the per-concept mean and variance; pass both or neither")
    if tuple(mean.shape) != shape or tuple(variance.shape) != shape:
        raise InputError(f"mean and variance must be {list(shape)}; got {list(mean.shape)} and {list(variance.shape)}")
    counts = torch.bincount(labels, minlength=shape[0]) if count is None else count
    if tuple(counts.shape) != (shape[0],):
        raise InputError(f"count must be [{shape[0]}] (one per concept); got {list(counts.shape)}")
    seen = counts.long().cpu() >= 1  # a concept without samples may have no (finite) mean; it is never drawn
    if not torch.isfinite(mean.cpu()[seen]).all():
        raise InputError("the per-concept means of concepts with samples hold NaN or infinite values")
    return mean, variance, counts


def _seeded(seed: int, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Fork the global RNGs (so the caller's stay untouched) and seed them."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )

    @contextlib.contextmanager
    def forked() -> Iterator[None]:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return forked()


def train_interpreter(
    x: Tensor,
    y: Tensor,
    *,
    concept_ids: Sequence[str],
    category: Sequence[str],
    layers: Sequence[int] | None = None,
    config: InterpreterConfig | None = None,
    mean: Tensor | None = None,
    variance: Tensor | None = None,
    count: Tensor | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Interpreter, TrainingLog]:
    """Train an `Interpreter` to read concept ``y`` from activations ``x``.

    Args:
        x: ``[m, n_layers, d]`` float activations (``[m, d]``: one layer).
        y: ``[m]`` concept indices in ``0..K-1``.
        concept_ids: the K concepts (metadata, and K).
        category: each concept's category (K names).
        layers: the captured layers' indices in the language model (metadata).
        config: architecture and training settings (default `InterpreterConfig`).
        mean, variance: per-concept running statistics ``[K, n_layers, d]`` for augmentation (both or neither).
        count: ``[K]`` samples behind each concept's statistics (default: counted from ``y``).
        device: where to train; the model is returned there, in eval mode.
        progress: show a progress bar on a terminal.

    Returns:
        The trained model (its ``training_log`` set) and the `TrainingLog`.

    Raises:
        InputError: empty data, shapes that disagree, K < 2, bad settings, or augmentation without statistics.
    """
    cfg = (config or InterpreterConfig()).check()
    n_concepts = len(concept_ids)
    if n_concepts < 2:
        raise InputError(f"an interpreter needs K >= 2 concepts; got K = {n_concepts}")
    features, labels = _checked(x, y, n_concepts)
    n_layers, d = int(features.shape[1]), int(features.shape[2])
    stats = _statistics(mean, variance, count, (n_concepts, n_layers, d), labels)
    per_concept = cfg.augment if cfg.augment is not None else (DEFAULT_AUGMENT if stats is not None else 0)
    if per_concept > 0 and stats is None:
        raise InputError(f"augment = {per_concept} needs the per-concept mean and variance; pass them or set augment=0")
    target = torch.device(device)
    with _seeded(cfg.seed, target):
        model = Interpreter(d, n_layers, concept_ids, category, cfg, layers)
        model.set_standardization(*standardization(features))
        model.to(target)
        generator = torch.Generator().manual_seed(cfg.seed)
        n_synthetic = 0
        if stats is not None and per_concept > 0:
            extra, extra_labels = synthesize(*stats, per_concept, cfg.augment_below, generator)
            n_synthetic = int(extra_labels.numel())
            features, labels = torch.cat([features, extra]), torch.cat([labels, extra_labels])
        log = _fit(model, features, labels, cfg, generator, progress)
    log.n_train, log.n_synthetic = int(x.shape[0]), n_synthetic
    model.training_log = log
    return model.eval(), log


def _fit(
    model: Interpreter,
    features: Tensor,
    labels: Tensor,
    cfg: InterpreterConfig,
    generator: torch.Generator,
    progress: bool,
) -> TrainingLog:
    """The training loop (the caller has seeded the RNGs)."""
    device = model.device
    cuda = device.type == "cuda"
    if cuda and features.numel() * features.element_size() <= DEVICE_DATA_BYTES:
        features, labels = features.to(device), labels.to(device)
    category_of = model.concept_category_index
    m = features.shape[0]
    steps_per_epoch = math.ceil(m / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    log = TrainingLog(device=str(device))
    started = time.perf_counter()
    model.train()
    with bar("training the interpreter", total=cfg.epochs * steps_per_epoch, enabled=progress) as handle:
        for _epoch in range(cfg.epochs):
            order = torch.randperm(m, generator=generator).to(features.device)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.long)
            lr = cfg.lr
            for start in range(0, m, cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                batch = features[rows].to(device, non_blocking=True)
                target = labels[rows].to(device, non_blocking=True)
                autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
                with autocast:
                    log_probs, category_logits = model.heads(batch)
                loss = F.cross_entropy(log_probs, target, label_smoothing=cfg.label_smoothing)
                if category_logits is not None:
                    category_target = category_of[target]
                    loss = loss + F.cross_entropy(category_logits, category_target, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                lr = float(optimizer.param_groups[0]["lr"])
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach().double() * rows.numel()
                correct += (log_probs.detach().argmax(dim=1) == target).sum()
                if handle is not None:
                    handle.advance()
            log.loss.append(float(loss_sum) / m)
            log.train_accuracy.append(int(correct) / m)
            log.lr.append(lr)
    log.steps = cfg.epochs * steps_per_epoch
    log.seconds = time.perf_counter() - started
    return log
