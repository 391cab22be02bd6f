"""An HTML page of an activation set's layers (`LayerAnalysis`): probes by layer and 2-D maps by class.

With several layers, a line chart shows each probe's held-out accuracy by layer next to the majority
baseline and the control task (shuffled labels); then each layer gets a scatter of its 2-D projection (PCA
or UMAP), points coloured by class, and a table of its geometry. Every string (class names, the model, the
dataset) is escaped.

Examples:
    >>> from mechscope.probing.analysis_results import LayerAnalysis, NamedProbe
    >>> from mechscope.probing.geometry_results import GeometryResult, Point
    >>> from mechscope.probing.results import ProbeScore
    >>> g = GeometryResult(explained_variance_ratio=[0.6, 0.3], intrinsic_dim_90=2, intrinsic_dim_95=2, n=2, d=2,
    ...     classes=["<i>a</i>", "b"], class_counts=[1, 1], fisher_ratio=1.0, silhouette=0.5,
    ...     mean_cosine=[[1.0, 0.0], [0.0, 1.0]],
    ...     points=[Point(x=0, y=0, label="<i>a</i>"), Point(x=1, y=1, label="b")])
    >>> s = ProbeScore(method="logistic", accuracy=0.9, fold_accuracies=[0.9, 0.9], majority=0.5,
    ...     control_accuracy=0.5, selectivity=0.4, p_value=0.05, permutations=20, folds=2, n=2, n_groups=2,
    ...     n_classes=2, seed=0)
    >>> a = LayerAnalysis(site="resid_post.1", layer=1, model="toy", dataset="d", n=2, geometry=g,
    ...     probes=[NamedProbe(target="label", score=s)])
    >>> page = render_probing_html([a])
    >>> "&lt;i&gt;a" in page and "<i>a</i>" not in page
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from mechscope.probing.analysis_results import LayerAnalysis
from mechscope.viz.charts import SVG_NS, Series, download_json, figure, line_chart, num, table
from mechscope.viz.colors import categorical
from mechscope.viz.page import render_page


def _accuracy_chart(analyses: Sequence[LayerAnalysis]) -> str:
    xs = [float(a.layer) for a in analyses]
    series = []
    for probe in analyses[0].probes:
        key = (probe.target, probe.score.method)
        scores = [a.probe(*key) for a in analyses]
        series.append(Series(f"{probe.target} ({probe.score.method})", xs, [s.accuracy for s in scores]))
    first = analyses[0].probes[0]
    majority = [a.probe(first.target, first.score.method).majority for a in analyses]
    control = [a.probe(first.target, first.score.method).control_accuracy for a in analyses]
    series.append(Series("majority (label)", xs, majority))
    series.append(Series("control (label)", xs, control))
    svg = line_chart(
        series,
        x_title="layer",
        y_title="held-out accuracy",
        label="held-out probe accuracy by layer, with the majority baseline and the control task",
    )
    return figure(svg, filename="probe-accuracy", caption="Held out by template; control: shuffled labels.")


def _scatter(analysis: LayerAnalysis, size: int = 360) -> str:
    g = analysis.geometry
    pad = 24
    xs, ys = [p.x for p in g.points], [p.y for p in g.points]
    x_low, x_high = min(xs, default=0.0), max(xs, default=1.0)
    y_low, y_high = min(ys, default=0.0), max(ys, default=1.0)

    def place(value: float, low: float, high: float) -> float:
        return pad + (size - 2 * pad) * ((value - low) / ((high - low) or 1.0))

    colour = {name: categorical(i) for i, name in enumerate(g.classes)}
    dots = "".join(
        f'<circle cx="{place(p.x, x_low, x_high):.1f}" cy="{size - place(p.y, y_low, y_high):.1f}" r="2.5" '
        f'fill="{colour.get(p.label, "#888")}" fill-opacity="0.7"><title>{escape(p.label)}</title></circle>'
        for p in g.points
    )
    axis = "PC" if g.projection == "pca" else "UMAP "
    titles = (
        f'<text x="{size / 2}" y="{size - 4}" text-anchor="middle" font-size="11">{axis}1</text>'
        f'<text x="10" y="{size / 2}" font-size="11" transform="rotate(-90 10 {size / 2})" '
        f'text-anchor="middle">{axis}2</text>'
    )
    svg = (
        f'<svg xmlns="{SVG_NS}" width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label="{escape(g.projection, quote=True)} projection of {escape(analysis.site, quote=True)}">'
        f'<rect x="0" y="0" width="{size}" height="{size}" fill="#fff" stroke="#ccc"/>{dots}{titles}</svg>'
    )
    legend = " ".join(
        f'<span class="swatch" style="background:{colour[name]}"></span>{escape(name)} ({count})'
        for name, count in zip(g.classes, g.class_counts, strict=True)
    )
    sampled = " (a sample of the points)" if g.points_sampled else ""
    return figure(svg, filename=f"projection-{analysis.layer}", caption=f"Classes{sampled}:") + (
        f'<p class="legend">{legend}</p>'
    )


def _geometry_table(analysis: LayerAnalysis) -> str:
    g = analysis.geometry
    top = ", ".join(num(v) for v in g.explained_variance_ratio[:3])
    rows: list[list[str | float | int]] = [
        ["explained variance, first components", top],
        ["intrinsic dimension (90% / 95% of the variance)", f"{g.intrinsic_dim_90} / {g.intrinsic_dim_95}"],
        ["Fisher ratio (between / within)", g.fisher_ratio],
        ["silhouette", g.silhouette],
    ]
    if g.cohens_d is not None:
        rows.append(["class-mean separation (Cohen's d)", g.cohens_d])
    for probe in analysis.probes:
        s = probe.score
        rows.append(
            [
                f"{probe.target} ({s.method}) held-out accuracy",
                f"{num(s.accuracy)} (majority {num(s.majority)}, control {num(s.control_accuracy)}, "
                f"p = {s.p_value:.2g})",
            ]
        )
    return table(["", analysis.site], rows, css="geometry")


def render_probing_html(analyses: Sequence[LayerAnalysis], focus: int | None = None) -> str:
    """The layers' analyses as one HTML document; ``focus`` (a layer) is drawn first."""
    if not analyses:
        raise ValueError("no layer analyses to draw")
    ordered = sorted(analyses, key=lambda a: (a.layer != focus, a.layer))
    first = analyses[0]
    intro = (
        f'<p class="legend">{first.n} prompts of {escape(first.dataset)}. Probes are scored on templates they '
        "never saw (grouped cross-validation), with the majority baseline and a control task on shuffled "
        "labels beside each accuracy.</p>"
    )
    sections = []
    if len(analyses) > 1:
        sections.append(("Probe accuracy by layer", _accuracy_chart(sorted(analyses, key=lambda a: a.layer))))
    for a in ordered:
        sections.append((f"Layer {a.layer} ({a.site})", _scatter(a) + _geometry_table(a)))
    payload = "[" + ",".join(a.model_dump_json() for a in analyses) + "]"
    return render_page(
        f"mechscope activation geometry: {first.model}",
        model=first.model,
        shows="How the labelled prompts' activations lie at each layer, and how well a linear probe reads them.",
        intro=intro,
        downloads=download_json(payload, "layers.json", "result JSON"),
        sections=sections,
    )
