"""Result types of the concept interpreter and its baselines: plain, serialisable values. No torch, no numpy.

`TrainingLog` is what training an interpreter records epoch by epoch (and what ``interpreter.json`` keeps);
`Reliability` is one bin of a reliability diagram; `ReaderScore` and `CategoryScore` are held-out scores of a
reader (the interpreter, a nearest-centroid reader, a linear probe), each with the chance level it must be
compared with.

Examples:
    >>> score = ReaderScore(name="centroid", top1=0.5, top5=0.75, n=40, chance_top1=0.1, chance_top5=0.5)
    >>> round(score.top1 - score.chance_top1, 2)
    0.4
    >>> TrainingLog(loss=[2.0, 1.0], train_accuracy=[0.4, 0.8], lr=[1e-3, 0.0]).epochs
    2
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class TrainingLog(BaseModel):
    """What training an interpreter recorded, one entry per epoch.

    Attributes:
        loss: mean training loss of each epoch (for the hierarchical interpreter: category plus concept
            cross-entropy).
        train_accuracy: top-1 concept accuracy on the epoch's training batches (dropout on, synthetic
            samples included).
        lr: the learning rate of the epoch's last step.
        n_train: real training samples.
        n_synthetic: synthetic samples added by augmentation.
        steps: optimiser steps in all.
        seconds: wall-clock time of the training loop.
        device: where it ran (``cpu``, ``cuda:0``).
    """

    loss: list[float] = Field(default_factory=list)
    train_accuracy: list[float] = Field(default_factory=list)
    lr: list[float] = Field(default_factory=list)
    n_train: int = Field(default=0, ge=0)
    n_synthetic: int = Field(default=0, ge=0)
    steps: int = Field(default=0, ge=0)
    seconds: float = Field(default=0.0, ge=0.0)
    device: str = "cpu"

    @model_validator(mode="after")
    def _one_entry_per_epoch(self) -> TrainingLog:
        if not len(self.loss) == len(self.train_accuracy) == len(self.lr):
            raise ValueError(
                f"{len(self.loss)} losses, {len(self.train_accuracy)} accuracies and {len(self.lr)} learning rates"
            )
        return self

    @property
    def epochs(self) -> int:
        """How many epochs were run."""
        return len(self.loss)


class Reliability(BaseModel):
    """One bin of a reliability diagram: the predictions whose confidence fell in ``(lower, upper]``.

    The first bin also holds confidence exactly ``lower`` (0). ``mean_confidence`` and ``accuracy`` are None
    for an empty bin.
    """

    lower: float = Field(ge=0.0, le=1.0)
    upper: float = Field(ge=0.0, le=1.0)
    count: int = Field(ge=0)
    mean_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    accuracy: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Reliability:
        if self.upper < self.lower:
            raise ValueError(f"bin edges {self.lower} > {self.upper}")
        return self

    @property
    def gap(self) -> float | None:
        """``accuracy - mean_confidence`` (negative: over-confident); None for an empty bin."""
        if self.accuracy is None or self.mean_confidence is None:
            return None
        return self.accuracy - self.mean_confidence


class ReaderScore(BaseModel):
    """Held-out top-1 and top-5 concept accuracy of a reader, with the chance levels of K classes.

    Attributes:
        name: the reader (``interpreter``, ``centroid``, ``linear``).
        top1, top5: the fraction of samples whose concept is the best, or among the five best, scored.
        n: evaluated samples.
        chance_top1, chance_top5: ``1/K`` and ``min(5, K)/K``.
    """

    name: str
    top1: float = Field(ge=0.0, le=1.0)
    top5: float = Field(ge=0.0, le=1.0)
    n: int = Field(ge=0)
    chance_top1: float = Field(ge=0.0, le=1.0)
    chance_top5: float = Field(ge=0.0, le=1.0)


class CategoryScore(BaseModel):
    """Held-out category accuracy of a reader, with the majority-category baseline.

    Attributes:
        name: the reader.
        accuracy: the fraction of samples whose category is the most probable one.
        majority: the accuracy of always answering the most frequent category of the evaluated samples.
        n: evaluated samples.
        n_categories: C, the categories the reader chooses among.
    """

    name: str
    accuracy: float = Field(ge=0.0, le=1.0)
    majority: float = Field(ge=0.0, le=1.0)
    n: int = Field(ge=0)
    n_categories: int = Field(ge=0)

    @property
    def above_majority(self) -> float:
        """``accuracy - majority``."""
        return self.accuracy - self.majority
