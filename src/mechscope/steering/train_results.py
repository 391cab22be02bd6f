"""Results of training steering vectors (torch-free): token counts, per-epoch records, baselines, LR sweeps.

Every result reports the steered model next to the vanilla model and a *prompted* baseline (the same
completions with the persona prefix or system prompt actually in the prompt), so a vector is never judged
alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, PrivateAttr


class DataStats(BaseModel):
    """Examples and tokens of the training and validation splits (counted before training)."""

    train_examples: int
    train_tokens: int
    train_loss_tokens: int
    val_examples: int
    val_tokens: int
    val_loss_tokens: int

    def line(self) -> str:
        """One line for the terminal, e.g. ``train: 90 examples, 2,013 tokens (1,204 with loss); val: ...``."""
        return (
            f"train: {self.train_examples:,} examples, {self.train_tokens:,} tokens "
            f"({self.train_loss_tokens:,} with loss); val: {self.val_examples:,} examples, "
            f"{self.val_tokens:,} tokens ({self.val_loss_tokens:,} with loss)"
        )


class EpochRecord(BaseModel):
    """One finished epoch: mean training loss, validation loss and perplexity (None without validation)."""

    epoch: int
    steps: int
    train_loss: float
    val_loss: float | None = None
    val_ppl: float | None = None
    norm: float
    lr: float


class TrainResult(BaseModel):
    """What `mechscope.steering.trainer.train` returns; ``steering_vector()`` gives the trained vector."""

    out: str | None = None
    model: str
    layer: int
    site: str
    positions: str
    lr: float
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    norm: float
    vanilla_ppl: float | None = None
    prompted_ppl: float | None = None
    steered_ppl: float | None = None
    data: DataStats
    history: list[EpochRecord]
    _vector: Any = PrivateAttr(default=None)

    def steering_vector(self) -> Any:
        """The trained `SteeringVector` (the best one when validation chose it)."""
        return self._vector

    def metrics(self) -> dict[str, Any]:
        """The metrics the checkpoint's ``config.json`` stores."""
        return {
            "vanilla_val_ppl": self.vanilla_ppl,
            "prompted_val_ppl": self.prompted_ppl,
            "steered_val_ppl": self.steered_ppl,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "norm": self.norm,
        }


class LRSweepRow(BaseModel):
    """One learning rate of a sweep."""

    lr: float
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    best_val_loss: float | None
    steered_ppl: float | None
    norm: float
    out: str | None = None


class LRSweep(BaseModel):
    """One row per learning rate, with the baselines shared by every run."""

    layer: int
    vanilla_ppl: float | None
    prompted_ppl: float | None
    rows: list[LRSweepRow]

    def best(self) -> LRSweepRow:
        """The row with the lowest steered validation perplexity (the first one if none has validation)."""
        scored = [row for row in self.rows if row.steered_ppl is not None]
        return min(scored, key=lambda row: row.steered_ppl or 0.0) if scored else self.rows[0]
