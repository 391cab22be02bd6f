"""The results of the causal analyses: plain, serialisable values that never hold a model or a tensor.

`PatchingResult` and `AttributionResult` (patching), `AblationEffect` and `AblationResult` (ablation),
`CircuitGraph` with its `Node` and `Edge` (circuit export). Viz renders these; nothing here imports torch.
"""

from __future__ import annotations

from pydantic import BaseModel


class PatchingResult(BaseModel):
    """Normalised patching effects ``effects[i][p]`` for layer ``layers[i]`` and position ``p``."""

    site: str
    clean_prompt: str
    corrupted_prompt: str
    tokens: list[str]
    layers: list[int]
    clean_metric: float
    corrupted_metric: float
    effects: list[list[float]]
    partial: bool = False  # the sweep was interrupted: ``effects`` covers the first layers only
    metric: str | None = None  # the metric's name, e.g. "logit diff ␣Paris − ␣Tokyo" (None: not recorded)

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` largest ``(layer, position, effect)``."""
        flat = [(layer, p, e) for layer, row in zip(self.layers, self.effects, strict=True) for p, e in enumerate(row)]
        return sorted(flat, key=lambda item: -item[2])[:k]


class AttributionResult(BaseModel):
    """Attribution-patching estimates ``effects[i][p]`` (normalised like `PatchingResult`)."""

    site: str
    tokens: list[str]
    layers: list[int]
    clean_metric: float
    corrupted_metric: float
    effects: list[list[float]]
    metric: str | None = None  # the metric's name (None: not recorded)


class AblationEffect(BaseModel):
    """One ablation: which component, the metric with it knocked out, and the change from the clean run."""

    component: str
    layer: int
    index: int | None = None
    metric: float | None = None
    delta: float | None = None
    text: str | None = None
    criterion: bool | None = None


class AblationResult(BaseModel):
    """A sweep: the clean run's metric / text and one effect per ablated component."""

    prompt: str
    component: str
    method: str
    clean_metric: float | None = None
    clean_text: str | None = None
    clean_criterion: bool | None = None
    effects: list[AblationEffect]
    partial: bool = False
    metric: str | None = None  # the logit metric's name (None: a criterion sweep, or not recorded)
    criterion: str | None = None  # a criterion sweep's criterion, by name ("contains ' Paris'", "function_call")

    def summary(self, k: int = 5) -> list[AblationEffect]:
        """The ``k`` ablations that change the metric most (or flip the criterion)."""
        if self.clean_metric is not None:
            return sorted(self.effects, key=lambda e: e.delta or 0.0)[:k]
        return [e for e in self.effects if e.criterion != self.clean_criterion][:k]


class Node(BaseModel):
    """A component (or the input / output) with its effect size."""

    id: str
    label: str
    layer: int | None = None
    position: int | None = None
    effect: float = 0.0


class Edge(BaseModel):
    """Information flow from one node to another; ``weight`` is the smaller effect of the two ends."""

    source: str
    target: str
    weight: float


class CircuitGraph(BaseModel):
    """The canonical circuit graph."""

    title: str
    origin: str  # "ablation" or "patching"
    nodes: list[Node]
    edges: list[Edge]
