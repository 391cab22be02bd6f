"""Results of analysing one layer of an activation set, and of a steering check. No torch.

`LayerAnalysis` puts a layer's geometry (`GeometryResult`) next to its probes (`ProbeScore`, each with its
majority baseline and control task); `SteeringCheck` reports how adding a found direction changes the
probability of a target token.
"""

from __future__ import annotations

from pydantic import BaseModel

from mechscope.probing.geometry_results import GeometryResult
from mechscope.probing.results import ProbeScore


class NamedProbe(BaseModel):
    """A probe's score with what it read: ``target`` (``label``, or ``sub_label among label 1``)."""

    target: str
    score: ProbeScore


class LayerAnalysis(BaseModel):
    """One layer of an activation set: geometry of the label's classes and probes with their baselines.

    Attributes:
        site, layer: where the features were read.
        model: the model they came from; dataset: the prompt set's name; n: examples.
        geometry: PCA, intrinsic dimension, class separation (of ``label``).
        probes: the logistic probe of the label, the difference-of-means probe of the label (binary labels),
            and the logistic probe of the sub-label among label-1 examples (where it has two classes or more).
    """

    site: str
    layer: int
    model: str
    dataset: str
    n: int
    geometry: GeometryResult
    probes: list[NamedProbe]

    def probe(self, target: str = "label", method: str = "logistic") -> ProbeScore:
        """The score of the probe of ``target`` by ``method``.

        Raises:
            KeyError: no such probe.
        """
        for item in self.probes:
            if item.target == target and item.score.method == method:
                return item.score
        raise KeyError(f"no {method} probe of {target}; probes: {[(p.target, p.score.method) for p in self.probes]}")


class SteeringCheck(BaseModel):
    """What adding a direction does to the probability of ``target`` at the last position of ``prompts``.

    Attributes:
        site, layer, direction: where the direction was added and its name (``label`` or a sub-label).
        norm: the norm of the vector added at coefficient 1 (the class means' separation along it).
        target: the token whose probability is read.
        coefficients: the coefficients tried (0 is the unsteered model).
        probabilities: the mean probability of ``target`` over the prompts at each coefficient.
        prompts: how many prompts.
    """

    site: str
    layer: int
    direction: str
    norm: float
    target: str
    coefficients: list[float]
    probabilities: list[float]
    prompts: int

    def at(self, coefficient: float) -> float:
        """The mean probability at ``coefficient``."""
        return self.probabilities[self.coefficients.index(coefficient)]
