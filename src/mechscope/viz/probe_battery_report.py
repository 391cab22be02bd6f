"""An HTML page of a probe battery (`BatteryResult`): the property x layer heatmap and the stratigraphy.

The heatmap shows each property's held-out accuracy at each layer, with the majority baseline in its own
column beside the layers, so that no accuracy is seen without it; the emergence layer's cell is outlined,
and every cell's hover text gives the control accuracy, selectivity and p-value. The stratigraphy table
lists emergence (with its bootstrap interval), peak and destruction per property, grouped by category.
Every string (property names, categories, the model) is escaped.

Examples:
    >>> from mechscope.probing.battery_results import BatteryResult, PropertyStrata
    >>> from mechscope.probing.results import ProbeScore
    >>> s = ProbeScore(method="logistic", accuracy=0.9, fold_accuracies=[0.9, 0.9], majority=0.5,
    ...     control_accuracy=0.5, selectivity=0.4, p_value=0.05, permutations=20, folds=2, n=40, n_groups=8,
    ...     n_classes=2, seed=0)
    >>> p = PropertyStrata(name="<b>tool</b>", category="task", label="label", source="tool_calls", n=40,
    ...     n_groups=8, n_classes=2, layers=[0], scores=[s], emergence=0, peak=0, peak_accuracy=0.9)
    >>> page = render_battery_html(BatteryResult(model="toy", battery="default", layers=[0], properties=[p]))
    >>> "&lt;b&gt;tool" in page and "<b>tool" not in page
    True
"""

from __future__ import annotations

from html import escape

from mechscope.probing.battery_results import BatteryResult, PropertyStrata
from mechscope.viz.charts import download_json, figure, heatmap, legend, num, table
from mechscope.viz.colors import UNIT
from mechscope.viz.page import render_page


def _layer(value: int | None) -> str:
    return "never" if value is None else f"L{value}"


def _interval(p: PropertyStrata) -> str:
    if p.emergence is None and p.emergence_low is None:
        return "—"
    return f"{_layer(p.emergence_low)}–{_layer(p.emergence_high)}"


def _heatmap(result: BatteryResult) -> str:
    props = result.properties
    columns = [f"L{layer}" for layer in result.layers] + ["majority"]
    values = [[*p.accuracies(), p.scores[0].majority] for p in props]
    n = len(result.layers)

    def tip(r: int, c: int, value: float) -> str:
        p = props[r]
        if c == n:
            return f"{p.name}: majority baseline {num(value)} (always guessing the most common class)"
        s = p.scores[c]
        return (
            f"{p.name} at layer {result.layers[c]}: held-out accuracy {num(s.accuracy)}, majority {num(s.majority)}, "
            f"control {num(s.control_accuracy)}, selectivity {s.selectivity:+.3f}, p = {s.p_value:.2g}"
        )

    def attrs(r: int, c: int, value: float) -> dict[str, str]:
        p = props[r]
        if c < n and p.emergence is not None and result.layers[c] == p.emergence:
            return {"stroke": "#000", "stroke-width": "2", "class": "emergence"}
        return {"class": "baseline"} if c == n else {}

    svg = heatmap(
        values,
        rows=[p.name for p in props],
        columns=columns,
        scale=UNIT,
        x_title="layer (and the majority baseline)",
        y_title="property",
        cell=28,
        cell_width=44,
        tip=tip,
        cell_attrs=attrs,
        text=lambda r, c, v: f"{v:.2f}",
        label="held-out probe accuracy per property and layer",
    )
    caption = (
        f"Held-out accuracy ({result.method} probe, {result.folds}-fold by template) of {result.site} at the "
        f"{result.positions} position; outlined: the emergence layer."
    )
    return figure(svg, filename="probe-battery", caption=caption) + legend(UNIT)


def _strata_table(result: BatteryResult) -> str:
    rows: list[list[str | float | int]] = []
    for row in result.stratigraphy():
        p = result.property(str(row["property"]))
        peak = p.at(p.peak)
        rows.append(
            [
                p.category,
                p.name,
                _layer(p.emergence),
                _interval(p),
                _layer(p.peak),
                p.peak_accuracy,
                peak.majority,
                peak.selectivity,
                _layer(p.destruction) if p.emergence is not None else "—",
                p.n,
                p.n_groups,
            ]
        )
    header = [
        "category",
        "property",
        "emerges",
        "95% interval",
        "peak",
        "peak accuracy",
        "majority",
        "selectivity",
        "destroyed",
        "prompts",
        "templates",
    ]
    return table(header, rows, css="strata")


def render_battery_html(result: BatteryResult) -> str:
    """The battery as one HTML document (a string); opens offline."""
    intro = (
        f'<p class="legend">Battery {escape(result.battery)}: {len(result.properties)} properties, '
        f"{result.prompts} distinct prompts in one collection pass. A property emerges at the first layer whose "
        f"held-out accuracy is at least {num(result.threshold)} and more than {num(result.margin)} above the "
        f"majority baseline, and is destroyed at the first later layer below {num(result.destroyed_below)}. "
        f"Intervals: {result.bootstrap} bootstrap resamples of templates. Control: the same probe on shuffled "
        f"labels ({result.permutations} shuffles); selectivity = accuracy − control.</p>"
    )
    return render_page(
        f"mechscope probe battery: {result.model}",
        model=result.model,
        shows="Where each property becomes linearly readable, peaks and is lost, layer by layer.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "probe-battery.json", "result JSON"),
        sections=[("Accuracy by layer", _heatmap(result)), ("Stratigraphy", _strata_table(result))],
    )
