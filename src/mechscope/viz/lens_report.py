"""A self-contained HTML report of a lens result: no scripts from the network, every token escaped.

The page has a layers x positions heatmap of the top token and its probability (hover a cell for the
runners-up), and one probability-per-layer curve per tracked token as inline SVG. Token strings are user
data and go through ``html.escape`` everywhere, in text and in attributes.
"""

from __future__ import annotations

from html import escape

from mechscope.lens.results import LensGrid, LensResult

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.heatmap { border-collapse: collapse; font-size: 12px; }
table.heatmap td, table.heatmap th { border: 1px solid #ddd; padding: 3px 5px; text-align: center; }
table.heatmap th.token { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; }
td.cell { min-width: 3em; }
.tok { font-family: ui-monospace, monospace; white-space: pre; }
.legend { margin: 0.5em 0 1.5em; font-size: 12px; color: #555; }
svg text { font-size: 11px; }
"""


def visible(token: str) -> str:
    """``token`` with whitespace made visible, escaped for HTML."""
    return escape(token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥"), quote=True)


def _colour(prob: float) -> str:
    # White to blue with probability; text turns white on dark cells.
    level = max(0.0, min(1.0, prob))
    red, green = int(255 - 190 * level), int(255 - 140 * level)
    return f"rgb({red},{green},255)"


def _heatmap(grid: LensGrid) -> str:
    head = "".join(f'<th class="token tok" title="{visible(t)}">{visible(t)}</th>' for t in grid.tokens)
    rows = []
    for layer, cells in zip(grid.layers, grid.cells, strict=True):
        tds = []
        for position, cell in enumerate(cells):
            best = cell.top[0]
            detail = ", ".join(f"{t.token!r} {t.prob:.3f}" for t in cell.top)
            colour = "#fff" if best.prob > 0.6 else "#222"
            tds.append(
                f'<td class="cell tok" data-layer="{layer}" data-position="{position}" '
                f'data-token="{escape(best.token, quote=True)}" data-prob="{best.prob:.4f}" '
                f'style="background:{_colour(best.prob)};color:{colour}" '
                f'title="layer {layer}, position {position}: {escape(detail, quote=True)}">{visible(best.token)}</td>'
            )
        rows.append(f"<tr><th>L{layer}</th>{''.join(tds)}</tr>")
    return f'<table class="heatmap"><tr><th>layer</th>{head}</tr>{"".join(rows)}</table>'


def _curves(result: LensResult, width: int = 520, height: int = 220) -> str:
    if not result.token_evolutions or not result.layer_predictions:
        return ""
    layers = result.token_evolutions[0].layers
    margin = 36
    span = max(1, len(layers) - 1)
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

    def x(i: int) -> float:
        return margin + (width - 2 * margin) * i / span

    def y(p: float) -> float:
        return height - margin - (height - 2 * margin) * p

    parts = [
        f'<svg class="curves" width="{width}" height="{height}" role="img" aria-label="tracked token probabilities">',
        f'<line x1="{margin}" y1="{y(0)}" x2="{width - margin}" y2="{y(0)}" stroke="#999"/>',
        f'<line x1="{margin}" y1="{y(0)}" x2="{margin}" y2="{y(1)}" stroke="#999"/>',
        f'<text x="4" y="{y(1) + 4}">1.0</text><text x="4" y="{y(0) + 4}">0.0</text>',
    ]
    for i, layer in enumerate(layers):
        parts.append(f'<text x="{x(i) - 6}" y="{height - margin + 16}">L{layer}</text>')
    for n, evolution in enumerate(result.token_evolutions):
        colour = palette[n % len(palette)]
        points = " ".join(f"{x(i):.1f},{y(p):.1f}" for i, p in enumerate(evolution.probs))
        label = visible(evolution.token)
        parts.append(
            f'<polyline class="curve" data-token="{escape(evolution.token, quote=True)}" points="{points}" '
            f'fill="none" stroke="{colour}" stroke-width="2"><title>{label}</title></polyline>'
        )
        parts.append(f'<text x="{width - margin + 4}" y="{y(evolution.probs[-1]) + 4}" fill="{colour}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_lens_html(result: LensResult, grid: LensGrid, *, model: str = "", lens: str = "logit") -> str:
    """The report as one HTML document (a string); write it anywhere and open it offline."""
    emergence = "never" if result.emergence_layer is None else f"layer {result.emergence_layer}"
    title = f"mechscope {lens} lens: {model}" if model else f"mechscope {lens} lens"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p>Prompt: <span class="tok" id="prompt">{escape(result.prompt)}</span></p>'
        f'<p>Prediction: <b class="tok" id="prediction">{visible(result.predicted_token)}</b> '
        f"(p = {result.predicted.prob:.3f}); top-1 from {emergence}.</p>"
        "<h2>Top token per layer and position</h2>"
        '<p class="legend">Darker is more probable; hover a cell for the top tokens.</p>'
        f"{_heatmap(grid)}"
        "<h2>Tracked tokens at the last position</h2>"
        f"{_curves(result)}"
        "</body></html>\n"
    )
