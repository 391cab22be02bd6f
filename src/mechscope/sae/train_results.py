"""Results of training an SAE (torch-free): the settings, a record per logged step, the held-out evaluation.

Explained variance is ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` over a set of tokens, ``x̄`` their mean; L0 the mean
number of active features per token; a feature is *dead* when it was not active in any of the last
``dead_tokens`` training tokens.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, model_validator


class TrainRecord(BaseModel):
    """One logged training step; the statistics are those of the step's batch (MSE in normalised units)."""

    step: int = Field(ge=1)
    tokens: int = Field(ge=0)
    loss: float
    mse: float = Field(ge=0)
    explained_variance: float = Field(le=1.0)
    l0: float = Field(ge=0)
    dead_fraction: float = Field(ge=0, le=1)
    lr: float = Field(ge=0)
    tokens_per_s: float = Field(ge=0)


class EvalStats(BaseModel):
    """An SAE measured on held-out tokens, in the site's own units.

    Attributes:
        tokens: tokens measured.
        mse: mean of ``(x - x̂)²`` over tokens and dimensions.
        explained_variance: ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²``.
        l0: mean active features per token.
        never_active_fraction: share of features active on none of these tokens.
    """

    tokens: int = Field(ge=1)
    mse: float = Field(ge=0)
    explained_variance: float = Field(le=1.0)
    l0: float = Field(ge=0)
    never_active_fraction: float = Field(ge=0, le=1)


class SAETrainResult(BaseModel):
    """What `mechscope.sae.train.train_sae` returns next to the SAE.

    ``final`` is measured on held-out documents after training; ``dead_fraction`` is the share of features
    dead at the end of training (inactive in the last ``dead_tokens`` tokens); ``history`` holds the logged
    steps with their throughput.
    """

    model: str
    site: str
    architecture: str
    width: int = Field(ge=1)
    k: int | None = None
    l1_coeff: float | None = None
    steps: int = Field(ge=0)
    tokens: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    dead_tokens: int = Field(ge=1)
    dead_fraction: float = Field(ge=0, le=1)
    resampled: int = Field(ge=0, description="features re-initialised by dead-feature resampling (ReLU)")
    final: EvalStats
    history: list[TrainRecord]
    tokens_per_s: float = Field(ge=0, description="training tokens per second over the whole run")
    resumed_at_step: int | None = None
    out: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SAETrainResult:
        if (self.k is None) == (self.l1_coeff is None):
            raise ValueError("an SAE is trained with either k (TopK) or l1_coeff (ReLU + L1)")
        if not math.isfinite(self.final.explained_variance):
            raise ValueError("the final explained variance is not finite; training diverged")
        if self.history and self.history[-1].step > self.steps:
            raise ValueError("the history runs past the last step")
        return self

    def line(self) -> str:
        """One line for the terminal: the held-out explained variance, L0 and the dead share."""
        return (
            f"{self.architecture} SAE of {self.width} features at {self.site}: {self.steps:,} steps, "
            f"{self.tokens:,} tokens; held out: explained variance {self.final.explained_variance:.3f}, "
            f"L0 {self.final.l0:.1f}, MSE per dimension {self.final.mse:.4g}; dead {self.dead_fraction:.1%}"
        )


__all__ = ["EvalStats", "SAETrainResult", "TrainRecord"]
