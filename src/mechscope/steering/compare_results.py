"""Results of comparing a trained steering vector with the activation-averaged one (torch-free).

`VectorComparison` holds, per layer, the difference-of-means vector's norm and its cosine with the trained
vector (which lives at one layer; the residual stream's basis is shared by all layers, so the cosine is
defined at each), and the validation perplexities at the trained layer: the vanilla model, the trained
vector, the difference-of-means vector at its own norm and rescaled to the trained vector's norm.

Examples:
    >>> row = LayerComparison(layer=0, cosine=0.5, diff_norm=2.0, trained_layer=True)
    >>> result = VectorComparison(model="toy", trained_layer=0, trained_norm=1.0, positions="all",
    ...     positive=2, negative=2, layers=[row])
    >>> result.at_trained_layer().cosine, result.rows()[0]["is_trained_layer"]
    (0.5, True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mechscope.storage.tables import ArrowType, write_table


class LayerComparison(BaseModel):
    """One layer: the difference-of-means vector's norm and its cosine with the trained vector."""

    layer: int
    cosine: float
    diff_norm: float
    trained_layer: bool = False


#: The Parquet columns, one row per layer (the perplexities repeat on every row; the diff-of-means ones
#: are measured at the trained layer only, so they are null on the other rows).
COLUMNS: dict[str, ArrowType] = {
    "layer": "int",
    "is_trained_layer": "bool",
    "cosine": "float",
    "diff_of_means_norm": "float",
    "trained_norm": "float",
    "vanilla_ppl": "float",
    "trained_ppl": "float",
    "diff_of_means_ppl": "float",
    "diff_of_means_rescaled_ppl": "float",
    "model": "string",
}


class VectorComparison(BaseModel):
    """What `mechscope.steering.comparison.compare_vectors` returns.

    Attributes:
        trained_layer / trained_norm: where the trained vector is added and its L2 norm.
        positions: where every steered perplexity adds its vector (the trained run's ``positions``).
        positive / negative: how many prompts the difference of means averaged on each side.
        vanilla_ppl / trained_ppl: validation perplexity of the model alone and with the trained vector.
        diff_ppl: with the difference-of-means vector of the trained layer at its own norm.
        diff_rescaled_ppl: with that vector rescaled to ``trained_norm`` (direction compared at equal strength).
        val_examples / val_loss_tokens: the trained run's validation split (re-made from its data and seed).
    """

    model: str
    trained_dir: str | None = None
    trained_layer: int
    trained_norm: float
    site: str = "resid_post"
    positions: str
    positive: int
    negative: int
    data: str | None = None
    data_hash: str | None = None
    val_examples: int = 0
    val_loss_tokens: int = 0
    vanilla_ppl: float | None = None
    trained_ppl: float | None = None
    diff_ppl: float | None = None
    diff_rescaled_ppl: float | None = None
    layers: list[LayerComparison]

    def at_trained_layer(self) -> LayerComparison:
        """The row of the trained vector's own layer."""
        return next(row for row in self.layers if row.layer == self.trained_layer)

    def rows(self) -> list[dict[str, Any]]:
        """One plain row per layer (the Parquet table's)."""
        rows = []
        for row in self.layers:
            own = row.layer == self.trained_layer
            rows.append(
                {
                    "layer": row.layer,
                    "is_trained_layer": own,
                    "cosine": row.cosine,
                    "diff_of_means_norm": row.diff_norm,
                    "trained_norm": self.trained_norm,
                    "vanilla_ppl": self.vanilla_ppl,
                    "trained_ppl": self.trained_ppl,
                    "diff_of_means_ppl": self.diff_ppl if own else None,
                    "diff_of_means_rescaled_ppl": self.diff_rescaled_ppl if own else None,
                    "model": self.model,
                }
            )
        return rows

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write `rows` to a Parquet file (atomically); returns its path."""
        return write_table(path, self.rows(), list(COLUMNS), fmt="parquet", types=COLUMNS)
