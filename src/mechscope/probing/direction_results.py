"""Directions read from labelled activations, as plain numbers: how each was made and how well it separates.

`ExtractedDirections` is the record `mechscope.probing.directions.extract_directions` returns next to the
vectors themselves (kept out of the model so that it stays small and serialises to a few lines of JSON): one
`ExtractedDirection` for the binary label and one per sub-label, each with its separation scores, held out
by group where the groups allowed it. No torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

DirectionMethod = Literal["diff_means", "probe", "lda", "pca"]


class ExtractedDirection(BaseModel):
    """One direction and how well projecting onto it separates its two sides.

    Attributes:
        name: ``"label"`` for the binary label's direction, else the sub-label.
        positive, negative: what the two sides are (``"label 1"`` / ``"label 0"``, ``"tool=weather"`` /
            ``"other tools"``); the positive side projects higher.
        n_positive, n_negative: examples on each side.
        norm: the norm of the vector as the method computed it (1 for ``pca``).
        auc: ROC AUC of the projection for positive against negative.
        cohens_d: the difference of the sides' mean projections over their pooled standard deviation.
        accuracy: accuracy of thresholding the projection at the midpoint of the two sides' mean projections.
        held_out: True when each example was scored by a direction fitted without its group (grouped k-fold;
            the threshold also comes from the training folds); False when the scores are in-sample.
        folds: the number of folds scored (0 in-sample).
        cosine_to_diff_means: the cosine between this vector and the difference of the sides' means (1 for
            ``diff_means``).
    """

    name: str
    positive: str
    negative: str
    n_positive: int
    n_negative: int
    norm: float
    auc: float = Field(ge=0.0, le=1.0)
    cohens_d: float
    accuracy: float = Field(ge=0.0, le=1.0)
    held_out: bool
    folds: int = 0
    cosine_to_diff_means: float

    def summary(self) -> str:
        """One line: the sides, the scores and whether they are held out.

        >>> item = ExtractedDirection(name="label", positive="label 1", negative="label 0", n_positive=40,
        ...     n_negative=40, norm=2.5, auc=0.97, cohens_d=2.4, accuracy=0.91, held_out=True, folds=5,
        ...     cosine_to_diff_means=0.88)
        >>> print(item.summary())
        label: label 1 (40) vs label 0 (40): AUC 0.970, Cohen's d 2.40, accuracy 0.910 (held out, 5 folds);
        norm 2.5, cosine to diff-means 0.880
        """
        scored = f"held out, {self.folds} folds" if self.held_out else "in-sample"
        return (
            f"{self.name}: {self.positive} ({self.n_positive}) vs {self.negative} ({self.n_negative}): "
            f"AUC {self.auc:.3f}, Cohen's d {self.cohens_d:.2f}, accuracy {self.accuracy:.3f} ({scored}); "
            f"norm {self.norm:.3g}, cosine to diff-means {self.cosine_to_diff_means:.3f}"
        )


class ExtractedDirections(BaseModel):
    """The directions of one extraction: the binary label's first, then one per sub-label.

    Attributes:
        method: how the vectors were fitted (``diff_means``, ``probe``, ``lda`` or ``pca``).
        site, layer: where the features were read, filled by callers.
        items: one `ExtractedDirection` per direction.
        skipped: sub-labels that got no direction, with the reason.
    """

    method: DirectionMethod
    site: str = ""
    layer: int | None = None
    items: list[ExtractedDirection]
    skipped: dict[str, str] = Field(default_factory=dict)

    def item(self, name: str) -> ExtractedDirection:
        """The direction called ``name``.

        Raises:
            KeyError: no such direction.
        """
        for item in self.items:
            if item.name == name:
                return item
        reason = self.skipped.get(name)
        known = ", ".join(i.name for i in self.items)
        raise KeyError(f"{name!r} was skipped: {reason}" if reason else f"no direction {name!r}; have: {known}")

    def summary(self) -> str:
        """One line per direction, then one per skipped sub-label."""
        where = " ".join(part for part in (self.site, "" if self.layer is None else f"layer {self.layer}") if part)
        lines = [f"{self.method} directions{' at ' + where if where else ''}:"]
        lines += [f"  {item.summary()}" for item in self.items]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
