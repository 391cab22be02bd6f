"""The result of a probe battery: per property and layer a `ProbeScore`, and the stratigraphy. No torch.

The stratigraphy names, for each property, where it becomes linearly readable (**emergence**: the first
layer whose held-out accuracy is at least ``threshold`` and more than ``margin`` above the majority
baseline), where it reads best (**peak**), and where it is lost again (**destruction**: the first layer after
emergence whose accuracy falls below ``destroyed_below``). The emergence layer comes with a bootstrap
interval over templates (groups resampled with replacement, the held-out predictions rescored).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mechscope.probing.results import ProbeScore


class PropertyStrata(BaseModel):
    """One property of the battery across layers.

    Attributes:
        name, category: the property and its group in the table (``task``, ``register``, ``control`` ...).
        label: which field was read (``label``, ``sub_label`` or ``metadata.KEY``).
        source: the generator or file the prompts came from.
        n, n_groups, n_classes: examples, templates (groups) and classes.
        layers: the layers probed; scores: one `ProbeScore` per layer (held-out accuracy with its majority
            baseline, control task, selectivity and p-value).
        emergence: the first readable layer (None: never).
        emergence_low, emergence_high: the 95% bootstrap interval of the emergence layer (None at an end:
            in more than 2.5% of resamples the property never emerged).
        emergence_never_share: the share of resamples in which it never emerged.
        peak, peak_accuracy: the layer of highest accuracy and that accuracy.
        destruction: the first layer after emergence below ``destroyed_below`` (None: never).
    """

    name: str
    category: str
    label: str
    source: str
    n: int
    n_groups: int
    n_classes: int
    layers: list[int]
    scores: list[ProbeScore]
    emergence: int | None
    emergence_low: int | None = None
    emergence_high: int | None = None
    emergence_never_share: float = Field(default=0.0, ge=0.0, le=1.0)
    peak: int
    peak_accuracy: float
    destruction: int | None = None

    def accuracies(self) -> list[float]:
        """Held-out accuracy at each probed layer."""
        return [s.accuracy for s in self.scores]

    def at(self, layer: int) -> ProbeScore:
        """The score at ``layer``."""
        return self.scores[self.layers.index(layer)]


class BatteryResult(BaseModel):
    """A battery run on one model: every property's scores and stratigraphy.

    Attributes:
        model, battery: the model's source and the battery's name.
        site, positions: what was probed (``resid_post`` at the ``last`` position by default).
        layers: the layers probed.
        threshold, margin, destroyed_below: the stratigraphy's rule (see the module).
        method, folds, permutations, bootstrap, seed: how each probe was scored.
        prompts: distinct prompts run through the model (one collection pass for every property).
        properties: one `PropertyStrata` per property, in battery order.
    """

    model: str
    battery: str
    site: str = "resid_post"
    positions: str = "last"
    layers: list[int]
    threshold: float = 0.75
    margin: float = 0.1
    destroyed_below: float = 0.5
    method: str = "logistic"
    folds: int = 5
    permutations: int = 20
    bootstrap: int = 200
    seed: int = 0
    prompts: int = 0
    properties: list[PropertyStrata]

    def property(self, name: str) -> PropertyStrata:
        """The property called ``name``.

        Raises:
            KeyError: no such property.
        """
        for item in self.properties:
            if item.name == name:
                return item
        raise KeyError(f"no property {name!r}; properties: {', '.join(p.name for p in self.properties)}")

    def categories(self) -> list[str]:
        """The categories in order of first appearance."""
        return list(dict.fromkeys(p.category for p in self.properties))

    def stratigraphy(self) -> list[dict[str, object]]:
        """The table: one row per property, grouped by category, in emergence order within a category."""
        never = len(self.layers) + 1
        rows: list[dict[str, object]] = []
        for category in self.categories():
            members = [p for p in self.properties if p.category == category]
            members.sort(key=lambda p: never if p.emergence is None else p.emergence)
            for p in members:
                rows.append(
                    {
                        "category": category,
                        "property": p.name,
                        "emergence": p.emergence,
                        "emergence_ci": [p.emergence_low, p.emergence_high],
                        "peak": p.peak,
                        "peak_accuracy": round(p.peak_accuracy, 4),
                        "majority_at_peak": round(p.at(p.peak).majority, 4),
                        "selectivity_at_peak": round(p.at(p.peak).selectivity, 4),
                        "destruction": p.destruction,
                    }
                )
        return rows
