"""Results of the convergence study: how a concept's running mean approaches a held-out reference. No torch."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ConceptConvergence(BaseModel):
    """One concept's curves, for n = 1 … max_n contexts (entry ``n - 1`` is after ``n`` contexts).

    Attributes:
        relative_difference: ``‖m_n − ref‖ / ‖ref‖`` of the running mean ``m_n`` and the reference mean.
        cosine: ``cos(m_n, ref)``.
        variance: the mean over dimensions of the sample variance (ddof 1) of the first n vectors (0 at n = 1).
        ci_width: the mean over dimensions of the 95% confidence interval's width, ``2 t_{0.975,n−1} s/√n``
            (None at n = 1).
        converged_at: the first n from which the concept stays converged up to max_n (None: never).
    """

    id: str
    term: str
    kind: str = ""
    relative_difference: list[float]
    cosine: list[float]
    variance: list[float]
    ci_width: list[float | None]
    converged_at: int | None = None

    def converged_by(self, n: int) -> bool:
        """Whether the concept is converged (for good) after ``n`` contexts."""
        return self.converged_at is not None and self.converged_at <= n


class ConvergenceStudy(BaseModel):
    """The convergence study of several concepts at one layer.

    Attributes:
        model, layer: where the activations were read.
        max_n: contexts per concept (training templates); reference: held-out templates averaged.
        tolerance, min_cosine: a concept is converged at n when its relative difference is at most
            ``tolerance`` and its cosine at least ``min_cosine``, and it stays so up to ``max_n``.
        centered: whether the mean over every context of every concept was subtracted first.
        n_reference: held-out contexts behind each reference mean.
    """

    model: str
    layer: int
    max_n: int = Field(ge=1)
    tolerance: float
    min_cosine: float
    centered: bool
    n_reference: int
    concepts: list[ConceptConvergence]

    def fraction_converged(self, n: int = 10, kind: str | None = None) -> float:
        """The fraction of concepts (of ``kind``: concrete / abstract, or all) converged by ``n`` contexts."""
        chosen = [c for c in self.concepts if kind is None or c.kind == kind]
        return sum(c.converged_by(n) for c in chosen) / len(chosen) if chosen else 0.0

    def by_kind(self, n: int = 10) -> dict[str, float]:
        """``fraction_converged(n, kind)`` for every kind present."""
        return {kind or "-": self.fraction_converged(n, kind) for kind in sorted({c.kind for c in self.concepts})}
