"""Result types of concept lenses and monitoring: plain, serialisable values that check themselves. No torch.

`LensScore` and `LensFitSummary` describe fitted lenses (what ``lenses.json`` stores per concept);
`MonitorToken` and `MonitorResult` are what `mechscope.concepts.monitor.monitor` reports token by token.

Examples:
    >>> hit = ConceptHit(id="toy:country:France", term="France", score=3.5, margin=1.25)
    >>> token = MonitorToken(index=4, token=" F", token_id=381, generated=False, concepts=[hit])
    >>> token.fired[0].term
    'France'
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator


class LensScore(BaseModel):
    """How well one concept's lens separates its samples, and where it fires.

    Attributes:
        concept_id: the concept's id.
        term: the text that stands for it.
        auroc: held-out AUROC (positives: the concept's evaluation rows; negatives: those of its siblings and
            random negatives); None when no held-out set was given or it lacked positives or negatives.
        threshold: the score above which the concept "fires" (0 until calibrated on neutral text).
        n_pos: training rows of the concept.
        n_neg: training rows of its negatives (siblings and random other concepts).
    """

    concept_id: str
    term: str
    auroc: float | None = Field(default=None, ge=0.0, le=1.0)
    threshold: float
    n_pos: int = Field(ge=0)
    n_neg: int = Field(ge=0)

    @field_validator("auroc", mode="before")
    @classmethod
    def _nan_is_none(cls, value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        return value


class LensFitSummary(BaseModel):
    """A summary of a set of fitted lenses: where they read, how well they separate, how they were fitted.

    Attributes:
        model: the model the activations came from.
        site: the site the lenses read (``resid_post.2``).
        n_concepts: K, the number of lenses.
        d_model: the width of the activations.
        n_evaluated: concepts with a held-out AUROC.
        mean_auroc, median_auroc, min_auroc: over the evaluated concepts (None if none).
        calibrated_fpr: the false-positive rate the thresholds were calibrated for (None: not calibrated).
        params: the fit's settings (``l2``, ``steps``, ``n_random``, ``seed``, ...).
        scores: one `LensScore` per concept, in lens order.
    """

    model: str
    site: str
    n_concepts: int = Field(ge=0)
    d_model: int = Field(ge=0)
    n_evaluated: int = Field(ge=0)
    mean_auroc: float | None = None
    median_auroc: float | None = None
    min_auroc: float | None = None
    calibrated_fpr: float | None = Field(default=None, ge=0.0, le=1.0)
    params: dict[str, float | int | str | None] = Field(default_factory=dict)
    scores: list[LensScore] = Field(default_factory=list)

    @classmethod
    def of(cls, scores: list[LensScore], **fields: Any) -> LensFitSummary:
        """The summary of per-concept ``scores``: counts and AUROC aggregates computed, other ``fields`` as given."""
        measured = [s.auroc for s in scores if s.auroc is not None]
        return cls(
            n_concepts=len(scores),
            n_evaluated=len(measured),
            mean_auroc=statistics.fmean(measured) if measured else None,
            median_auroc=statistics.median(measured) if measured else None,
            min_auroc=min(measured) if measured else None,
            scores=scores,
            **fields,
        )

    @model_validator(mode="after")
    def _one_score_per_concept(self) -> LensFitSummary:
        if self.scores and len(self.scores) != self.n_concepts:
            raise ValueError(f"{len(self.scores)} scores for {self.n_concepts} concepts")
        return self


class ConceptHit(BaseModel):
    """One concept's reading on one token.

    Attributes:
        id, term: the concept.
        score: the lens score ``h @ W + b`` (a logit).
        margin: ``score - threshold``; the concept fires on the token when it is positive.
    """

    id: str
    term: str
    score: float
    margin: float

    @property
    def fires(self) -> bool:
        """Whether the score is above the concept's threshold."""
        return self.margin > 0


class MonitorToken(BaseModel):
    """The top concepts on one token.

    The scores read the hidden state *at* this token's position, i.e. the state after the model has read
    this token (and everything before it) — not the state that predicted it.

    Attributes:
        index: the token's position in the whole sequence (prompt tokens first, special tokens included).
        token: its text.
        token_id: its id.
        generated: whether the model generated it (False for prompt tokens).
        concepts: the top-k concepts by score, best first.
    """

    index: int = Field(ge=0)
    token: str
    token_id: int
    generated: bool
    concepts: list[ConceptHit]

    @property
    def fired(self) -> list[ConceptHit]:
        """The top concepts whose score is above their threshold."""
        return [hit for hit in self.concepts if hit.fires]


class MonitorResult(BaseModel):
    """Concepts read per token while a model generated from a prompt.

    Attributes:
        prompt: the prompt.
        generated: the generated text (what `LanguageModel.generate` returns for the same arguments).
        tokens: one entry per token read: the prompt's (when included) then the generated ones, in order.
        site: the site the lenses read.
        layer: its layer (None for a site without one).
        model: the model generated with.
    """

    prompt: str
    generated: str
    tokens: list[MonitorToken]
    site: str
    layer: int | None = None
    model: str = ""

    def generated_tokens(self) -> list[MonitorToken]:
        """Only the generated tokens."""
        return [token for token in self.tokens if token.generated]
