"""The result of a probe: plain numbers, no tensors, no torch.

`ProbeScore` keeps the held-out accuracy together with what it must be compared with (the majority baseline
and the control task), so that an accuracy is never shown without its baseline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ProbeMethod = Literal["logistic", "diff_means"]


class ProbeScore(BaseModel):
    """How well a linear probe reads a label from features, on held-out groups (templates).

    Attributes:
        method: ``"logistic"`` (standardised logistic regression) or ``"diff_means"`` (projection on the
            difference of class means, thresholded at the midpoint).
        accuracy: held-out accuracy, pooled over the folds (each example is predicted once, by a probe that
            never saw its group).
        fold_accuracies: held-out accuracy of each fold.
        majority: the majority baseline: always guessing the class most common among the tested examples
            (pooled over the folds; a fold's training majority is no baseline under grouped splits).
        control_accuracy: the same probe's held-out accuracy on shuffled labels (the mean over the shuffles).
        selectivity: ``accuracy - control_accuracy``.
        p_value: permutation p-value, ``(1 + #shuffles scoring >= accuracy) / (1 + permutations)``; 1.0
            when no permutations were run.
        permutations: how many shuffles were scored (at least one is always run for the control).
        folds: the number of cross-validation folds actually used.
        n, n_groups, n_classes: examples, distinct groups and distinct labels.
        seed: the seed of the fold assignment and of the shuffles.
    """

    method: ProbeMethod
    accuracy: float = Field(ge=0.0, le=1.0)
    fold_accuracies: list[float]
    majority: float = Field(ge=0.0, le=1.0)
    control_accuracy: float = Field(ge=0.0, le=1.0)
    selectivity: float
    p_value: float = Field(gt=0.0, le=1.0)
    permutations: int = Field(ge=0)
    folds: int = Field(ge=2)
    n: int
    n_groups: int
    n_classes: int
    seed: int

    @property
    def above_majority(self) -> float:
        """``accuracy - majority``."""
        return self.accuracy - self.majority

    def summary(self) -> str:
        """One line: the accuracy with its baseline, control, selectivity and p-value.

        >>> score = ProbeScore(method="logistic", accuracy=0.9, fold_accuracies=[0.9, 0.9], majority=0.5,
        ...     control_accuracy=0.52, selectivity=0.38, p_value=0.0099, permutations=100, folds=2, n=40,
        ...     n_groups=8, n_classes=2, seed=0)
        >>> print(score.summary())
        logistic probe: held-out accuracy 0.900 (majority 0.500, control 0.520, selectivity +0.380,
        p = 0.0099; 2 folds over 8 groups, n = 40)
        """
        return (
            f"{self.method} probe: held-out accuracy {self.accuracy:.3f} (majority {self.majority:.3f}, "
            f"control {self.control_accuracy:.3f}, selectivity {self.selectivity:+.3f}, p = {self.p_value:.2g}; "
            f"{self.folds} folds over {self.n_groups} groups, n = {self.n})"
        )

    def __str__(self) -> str:
        return self.summary()
