"""HTML pages of the concept encyclopedia: the convergence study and the interpreter's reliability.

Examples:
    >>> from mechscope.concepts.convergence_results import ConceptConvergence, ConvergenceStudy
    >>> c = ConceptConvergence(id="x", term="<b>x</b>", relative_difference=[1.0, 0.4], cosine=[0.5, 0.9],
    ...     variance=[0.0, 1.0], ci_width=[None, 2.0], converged_at=2)
    >>> study = ConvergenceStudy(model="m", layer=5, max_n=2, tolerance=0.5, min_cosine=0.85, centered=True,
    ...     n_reference=8, concepts=[c])
    >>> page = convergence_report(study)
    >>> "&lt;b&gt;x" in page and "<b>x</b>" not in page and "<svg" in page
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Protocol

from mechscope.concepts.convergence_results import ConvergenceStudy
from mechscope.viz.charts import SVG_NS, Series, figure, line_chart, num, table
from mechscope.viz.page import render_page


class Bin(Protocol):
    """A reliability bin: its confidence range, sample count, mean confidence and accuracy."""

    @property
    def lower(self) -> float: ...

    @property
    def upper(self) -> float: ...

    @property
    def count(self) -> int: ...

    @property
    def mean_confidence(self) -> float | None: ...

    @property
    def accuracy(self) -> float | None: ...


def convergence_report(study: ConvergenceStudy) -> str:
    """Relative difference and cosine against the held-out reference, by contexts seen, one line per concept."""
    xs = [float(n) for n in range(1, study.max_n + 1)]
    difference = [Series(c.term, xs, c.relative_difference) for c in study.concepts]
    difference.append(Series(f"tolerance {num(study.tolerance)}", [xs[0], xs[-1]], [study.tolerance] * 2))
    high = max([study.tolerance, *(v for c in study.concepts for v in c.relative_difference)])
    cosine = [Series(c.term, xs, c.cosine) for c in study.concepts]
    cosine.append(Series(f"min cosine {num(study.min_cosine)}", [xs[0], xs[-1]], [study.min_cosine] * 2))
    low = min([study.min_cosine, 0.0, *(v for c in study.concepts for v in c.cosine)])
    charts = figure(
        line_chart(difference, x_title="contexts n", y_title="relative difference", y_high=high, label="difference"),
        filename="convergence-difference",
        caption="Relative difference of the running mean from the held-out reference mean.",
    ) + figure(
        line_chart(cosine, x_title="contexts n", y_title="cosine", y_low=low, label="cosine"),
        filename="convergence-cosine",
        caption="Cosine of the running mean with the held-out reference mean.",
    )
    rows: list[list[str | float | int]] = [
        [c.id, c.term, c.kind or "-", c.relative_difference[-1], c.cosine[-1], str(c.converged_at or "never")]
        for c in study.concepts
    ]
    kinds = ", ".join(f"{kind} {fraction:.0%}" for kind, fraction in study.by_kind(10).items())
    summary = (
        f"<p>Converged by n = 10: {study.fraction_converged(10):.0%} ({escape(kinds)}). Converged means a relative "
        f"difference of at most {num(study.tolerance)} and a cosine of at least {num(study.min_cosine)} from then on"
        f"{' (centred vectors)' if study.centered else ''}; reference: {study.n_reference} held-out templates.</p>"
    )
    body = summary + table(["concept", "term", "kind", f"rel. diff at {study.max_n}", "cosine", "converged at"], rows)
    return render_page(
        f"Convergence at layer {study.layer}",
        model=study.model,
        shows="how many template contexts a concept's mean activation needs",
        sections=[("Curves", charts), ("Concepts", body)],
    )


def _reliability_svg(bins: Sequence[Bin], size: int = 320) -> str:
    pad = 36
    inner = size - 2 * pad

    def x(value: float) -> float:
        return pad + inner * value

    def y(value: float) -> float:
        return size - pad - inner * value

    bars = "".join(
        f'<rect x="{x(b.lower):.1f}" y="{y(b.accuracy):.1f}" width="{inner * (b.upper - b.lower):.1f}" '
        f'height="{inner * b.accuracy:.1f}" fill="#4c78a8" fill-opacity="0.75"><title>confidence '
        f"{num(b.lower)}–{num(b.upper)}: accuracy {num(b.accuracy)} over {b.count}</title></rect>"
        for b in bins
        if b.accuracy is not None and b.count
    )
    diagonal = f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#d62728" stroke-dasharray="4 3"/>'
    axes = (
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>'
        f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="11">confidence</text>'
        f'<text x="12" y="{size / 2}" font-size="11" transform="rotate(-90 12 {size / 2})" '
        f'text-anchor="middle">accuracy</text>'
    )
    return (
        f'<svg xmlns="{SVG_NS}" width="{size}" height="{size}" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label="reliability diagram">{axes}{bars}{diagonal}</svg>'
    )


def reliability_report(bins: Sequence[Bin], *, title: str = "Interpreter reliability", model: str = "") -> str:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    rows: list[list[str | float | int]] = [
        [f"{num(b.lower)}–{num(b.upper)}", b.count, "-" if b.mean_confidence is None else b.mean_confidence,
         "-" if b.accuracy is None else b.accuracy]
        for b in bins
    ]  # fmt: skip
    body = figure(_reliability_svg(bins), filename="reliability", caption="Bars above the line: under-confident.")
    body += table(["confidence", "samples", "mean confidence", "accuracy"], rows)
    return render_page(title, model=model, shows="calibration of the interpreter's confidence", sections=[("", body)])
