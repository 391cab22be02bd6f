"""Metrics of the causal analyses: one number per batch row, computed from the logits.

A `Metric` is any callable mapping logits ``[batch, pos, vocab]`` to ``[batch]``. A metric that needs the
clean run (such as `KLToClean`) also has ``fit(clean_logits)``; the sweeps call `prepare` with the clean
logits before measuring anything, so every metric works in patching and in ablation alike.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
    >>> float(metric(lm.forward("The capital of France is"))[0]) > 0
    True
    >>> metric.name
    'logit diff ␣Paris − ␣Tokyo'
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.text import show_whitespace


@runtime_checkable
class Metric(Protocol):
    """Logits ``[batch, pos, vocab]`` → one number per row ``[batch]`` (higher: more of the behaviour)."""

    def __call__(self, logits: Tensor) -> Tensor: ...


@runtime_checkable
class FitsClean(Protocol):
    """A metric measured relative to the clean run: ``fit`` is given the clean logits first."""

    def fit(self, clean_logits: Tensor) -> object:
        """Remember what the clean run's ``clean_logits`` give (the metric's reference); returns the fitted metric."""
        ...


def prepare(metric: Metric, clean_logits: Tensor) -> Metric:
    """``metric`` ready to measure: fitted to ``clean_logits`` if it needs the clean run."""
    if isinstance(metric, FitsClean):
        metric.fit(clean_logits)
    return metric


class LogitDiff:
    """``logit(correct) - logit(wrong)`` at the last position: the standard patching metric.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> metric = LogitDiff(lm, correct=" Paris", wrong=" Tokyo")
        >>> logits = lm.forward(["The capital of France is", "The capital of Japan is"])
        >>> [round(value, 1) for value in metric(logits).tolist()]  # > 0: " Paris" wins; < 0: " Tokyo" does
        [9.9, -8.5]
    """

    def __init__(self, lm: LanguageModel, *, correct: str, wrong: str) -> None:
        self.correct = lm.token_id(correct)
        self.wrong = lm.token_id(wrong)
        self.name = f"logit diff {show_whitespace(correct)} − {show_whitespace(wrong)}"

    def __call__(self, logits: Tensor) -> Tensor:
        last = logits[:, -1].float()
        return last[:, self.correct] - last[:, self.wrong]


class TargetProb:
    """The probability of ``target`` (one token) at the last position.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> metric = TargetProb(lm, " Paris")
        >>> logits = lm.forward(["The capital of France is", "The capital of Japan is"])
        >>> metric.name, [round(p, 3) for p in metric(logits).tolist()]
        ('p(␣Paris)', [0.993, 0.0])
    """

    def __init__(self, lm: LanguageModel, target: str) -> None:
        self.target = lm.token_id(target)
        self.name = f"p({show_whitespace(target)})"

    def __call__(self, logits: Tensor) -> Tensor:
        return logits[:, -1].float().softmax(-1)[:, self.target]


class KLToClean:
    """Minus the KL divergence from the clean run's next-token distribution (higher is closer to clean).

    The sweeps fit it to the clean logits themselves; call `fit` first when using it directly.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> metric = KLToClean().fit(lm.forward("The capital of France is"))  # the clean run
        >>> abs(float(metric(lm.forward("The capital of France is"))[0])) < 1e-6  # the clean run itself: 0
        True
        >>> round(float(metric(lm.forward("The capital of Japan is"))[0]), 2)  # another prompt: far below 0
        -8.42
    """

    name = "−KL to clean"

    def __init__(self) -> None:
        self.reference: Tensor | None = None

    def fit(self, clean_logits: Tensor) -> KLToClean:
        """Remember the clean run's last-position distribution."""
        self.reference = clean_logits[:, -1].float().log_softmax(-1)
        return self

    def __call__(self, logits: Tensor) -> Tensor:
        if self.reference is None:
            raise InputError("KLToClean needs the clean logits first: call .fit(clean_logits)")
        log_p = self.reference[:1].expand(logits.shape[0], -1)
        log_q = logits[:, -1].float().log_softmax(-1)
        return -(log_p.exp() * (log_p - log_q)).sum(-1)
