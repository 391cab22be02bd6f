"""What an evaluation of concept readers on held-out data found. No torch.

`ConceptEvaluation` puts the interpreter's held-out top-1/top-5 next to chance and to the baselines fitted
on the same training rows (nearest centroid, linear probe), with its calibration (expected calibration
error of the confidence ``1 − H/H_max`` and of the top probability, and the reliability bins) and its
accuracy per category. With held-out *concepts*, it reports category prediction against the majority
category and a category-centroid reader instead.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mechscope.concepts.interpreter_results import CategoryScore, ReaderScore, Reliability


class CategoryAccuracy(BaseModel):
    """The interpreter's held-out top-1 on the samples of one category (e.g. ``noun.animal``)."""

    category: str
    n: int = Field(ge=0)
    top1: float = Field(ge=0.0, le=1.0)
    centroid_top1: float | None = None


class ConceptEvaluation(BaseModel):
    """Held-out evaluation of an interpreter and its baselines on one encyclopedia.

    Attributes:
        model, layers: the language model and the captured layers the readers read.
        held_out: ``templates`` (contexts in templates never used for training) or ``concepts`` (concepts
            never seen in training; category prediction).
        n_train, n_eval: training rows the readers were fitted on, and evaluated samples.
        n_concepts: K, the concepts the readers choose among.
        readers: held-out scores (interpreter first, then the baselines), each with chance levels.
        ece: expected calibration error (15 equal-width bins) of the interpreter's confidence ``1 − H/H_max``.
        ece_top_probability: the same with the top probability as confidence (Guo et al. 2017's definition).
        reliability: the bins behind ``ece``.
        per_category: the interpreter's top-1 per category of the evaluated samples.
        categories: with held-out concepts, category accuracy of the interpreter and of the category
            centroid, each with the majority-category baseline.
    """

    model: str
    layers: list[int]
    held_out: str
    n_train: int = Field(ge=0)
    n_eval: int = Field(ge=0)
    n_concepts: int = Field(ge=0)
    readers: list[ReaderScore] = Field(default_factory=list)
    ece: float | None = None
    ece_top_probability: float | None = None
    reliability: list[Reliability] = Field(default_factory=list)
    per_category: list[CategoryAccuracy] = Field(default_factory=list)
    categories: list[CategoryScore] = Field(default_factory=list)

    def reader(self, name: str) -> ReaderScore:
        """The score of reader ``name``.

        Raises:
            KeyError: no such reader was evaluated.
        """
        for score in self.readers:
            if score.name == name:
                return score
        raise KeyError(f"no reader {name!r}; evaluated: {[s.name for s in self.readers]}")

    def category(self, name: str) -> CategoryScore:
        """The category score of reader ``name`` (held-out concepts only)."""
        for score in self.categories:
            if score.name == name:
                return score
        raise KeyError(f"no category reader {name!r}; evaluated: {[s.name for s in self.categories]}")

    def best_baseline(self) -> ReaderScore | CategoryScore | None:
        """The strongest baseline: by top-1 over held-out templates, by accuracy over held-out concepts."""
        if self.held_out == "concepts":
            others = [s for s in self.categories if s.name != "interpreter"]
            return max(others, key=lambda s: s.accuracy) if others else None
        baselines = [s for s in self.readers if s.name != "interpreter"]
        return max(baselines, key=lambda s: s.top1) if baselines else None

    def verdict(self) -> str:
        """One line: does the interpreter beat its strongest baseline, by how much."""
        best = self.best_baseline()
        if self.held_out == "concepts":
            mine = self.category("interpreter")
            if not isinstance(best, CategoryScore):
                return f"interpreter category accuracy {mine.accuracy:.3f} (majority {mine.majority:.3f})"
            word = "beats" if mine.accuracy > best.accuracy else "does not beat"
            return (
                f"interpreter {word} the {best.name} on held-out concepts' categories: {mine.accuracy:.3f} vs "
                f"{best.accuracy:.3f} (majority {mine.majority:.3f})"
            )
        score = self.reader("interpreter")
        if not isinstance(best, ReaderScore):
            return f"interpreter top-1 {score.top1:.3f} (chance {score.chance_top1:.2g})"
        word = "beats" if score.top1 > best.top1 else "does not beat"
        return (
            f"interpreter {word} the {best.name} on held-out templates: top-1 {score.top1:.3f} vs {best.top1:.3f} "
            f"(chance {score.chance_top1:.2g})"
        )
