"""Results of a layer x scale steering search (pydantic, torch-free) and the rule that ranks its candidates.

**Ranking rule** (`rank_candidates`). A candidate is one (layer, scale) condition of the search's rollouts.
It is *eligible* when it is fluent (its perplexity under the vanilla model is at most ``max_perplexity_ratio``
times vanilla's, 3 by default) and has a paired difference from vanilla ("gain" in trait score); every other
candidate is excluded (``rank`` None) but still reported. Eligible candidates are ranked by the **lower bound**
of the gain's confidence interval, highest first (a conservative choice: a large but noisy gain does not beat
a smaller sure one); ties go to the more fluent (lower perplexity ratio), then to the higher mean gain, then to
the lower layer and the earlier scale. Rank 1 is the ``best``. A best candidate whose gain interval does not
lie above 0 is reported with ``success`` False: the search then found no vector that reliably steers.

Example (a hand-built table; the noisy large gain loses to the sure one, the broken text is excluded):
    >>> def cand(layer, scale, low, mean, ratio):
    ...     gain = Interval(mean=mean, low=low, high=mean + 0.1)
    ...     return SearchCandidate(layer=layer, scale=scale, condition=f"L{layer}@{scale}", score=gain,
    ...                            gain=gain, perplexity_ratio=ratio, fluent=ratio <= 3.0)
    >>> ranked = rank_candidates([cand(1, "8", 0.1, 0.9, 1.5), cand(2, "4", 0.5, 0.6, 2.0), cand(3, "9", 0.9, 1, 40)])
    >>> [(c.condition, c.rank) for c in ranked]
    [('L1@8', 2), ('L2@4', 1), ('L3@9', None)]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mechscope.steering.rollout_results import Interval
from mechscope.storage.tables import ArrowType, write_table

CANDIDATE_TYPES: dict[str, ArrowType] = {
    "layer": "int",
    "scale": "string",
    "condition": "string",
    "score": "float",
    "gain": "float",
    "gain_low": "float",
    "gain_high": "float",
    "perplexity_ratio": "float",
    "fluent": "bool",
    "success": "bool",
    "rank": "int",
    "norm": "float",
}


class SearchCandidate(BaseModel):
    """One (layer, scale) of the search.

    Attributes:
        condition: its condition in the rollouts (``L2@learned``).
        score: mean classifier score with its CI; ``gain``: the paired difference from vanilla with its CI.
        perplexity_ratio: perplexity of its text under the vanilla model over vanilla's own.
        fluent: ``perplexity_ratio <= max_perplexity_ratio``; ``success``: fluent and the gain CI above 0.
        rank: 1 for the best; None when excluded (not fluent, or no gain measured).
        norm: the norm of the layer's vector as stored (the ``learned`` scale).
    """

    layer: int
    scale: str
    condition: str
    score: Interval
    gain: Interval | None = None
    perplexity_ratio: float | None = None
    fluent: bool | None = None
    success: bool | None = None
    rank: int | None = None
    norm: float | None = None


class LayerTraining(BaseModel):
    """The vector used at one layer: trained by the search (validation perplexities) or given."""

    layer: int
    source: str
    norm: float
    vanilla_ppl: float | None = None
    prompted_ppl: float | None = None
    steered_ppl: float | None = None


class SteeringSearch(BaseModel):
    """Every candidate of a layer x scale search next to the prompted baseline, ranked by `rank_candidates`."""

    model: str
    dataset: str
    layers: list[int]
    scales: list[str]
    max_perplexity_ratio: float
    vanilla_score: Interval
    prompted_gain: Interval | None = None
    prompted_perplexity_ratio: float | None = None
    candidates: list[SearchCandidate]
    training: list[LayerTraining] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def best(self) -> SearchCandidate | None:
        """The rank-1 candidate, or None when every candidate was excluded."""
        return next((c for c in self.candidates if c.rank == 1), None)

    def ranked(self) -> list[SearchCandidate]:
        """The eligible candidates, best first."""
        return sorted((c for c in self.candidates if c.rank is not None), key=lambda c: c.rank or 0)

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """One row per candidate (CI bounds as columns), via `mechscope.storage.tables.write_table`."""
        rows = [candidate_row(c) for c in self.candidates]
        return write_table(path, rows, list(CANDIDATE_TYPES), types=CANDIDATE_TYPES)


def candidate_row(candidate: SearchCandidate) -> dict[str, Any]:
    """A candidate as a flat table row."""
    gain = candidate.gain
    return {
        "layer": candidate.layer,
        "scale": candidate.scale,
        "condition": candidate.condition,
        "score": candidate.score.mean,
        "gain": None if gain is None else gain.mean,
        "gain_low": None if gain is None else gain.low,
        "gain_high": None if gain is None else gain.high,
        "perplexity_ratio": candidate.perplexity_ratio,
        "fluent": candidate.fluent,
        "success": candidate.success,
        "rank": candidate.rank,
        "norm": candidate.norm,
    }


def eligible(candidate: SearchCandidate) -> bool:
    """Fluent (measured and within the limit) with a measured gain: it may be ranked."""
    return candidate.fluent is True and candidate.gain is not None


def rank_candidates(candidates: Sequence[SearchCandidate]) -> list[SearchCandidate]:
    """Copies of ``candidates`` in their order, with ``rank`` set by the rule in the module docstring.

    Examples:
        Equal gains: the more fluent candidate (lower perplexity ratio) ranks first; one without a measured
        gain is excluded; the candidates given are left as they were:

        >>> gain = Interval(mean=0.6, low=0.4, high=0.8)
        >>> a = SearchCandidate(layer=1, scale="4", condition="L1@4", score=gain, gain=gain, perplexity_ratio=2.5,
        ...                     fluent=True)
        >>> b = a.model_copy(update={"layer": 2, "condition": "L2@4", "perplexity_ratio": 1.2})
        >>> c = a.model_copy(update={"layer": 3, "condition": "L3@4", "gain": None})
        >>> [(x.condition, x.rank) for x in rank_candidates([a, b, c])], a.rank
        ([('L1@4', 2), ('L2@4', 1), ('L3@4', None)], None)
    """
    order = {id(c): i for i, c in enumerate(candidates)}

    def key(c: SearchCandidate) -> tuple[float, float, float, int, int]:
        gain = c.gain
        assert gain is not None
        ratio = c.perplexity_ratio if c.perplexity_ratio is not None else math.inf
        return (-gain.low, ratio, -gain.mean, c.layer, order[id(c)])

    ranks = {id(c): i + 1 for i, c in enumerate(sorted((c for c in candidates if eligible(c)), key=key))}
    return [c.model_copy(update={"rank": ranks.get(id(c))}) for c in candidates]
