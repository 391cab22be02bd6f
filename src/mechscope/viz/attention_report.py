"""A self-contained HTML attention report: a query x key heatmap and a layers x heads overview.

Built from a `LayerAttention` result (token strings, nested lists of floats), never from a model. Every token string is
escaped, in text and in attributes.
"""

from __future__ import annotations

from html import escape

from mechscope.attention.results import LayerAttention
from mechscope.viz.lens_report import visible

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 1.5em; }
td, th { border: 1px solid #ddd; padding: 2px 4px; text-align: center; }
th.key { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; }
.tok { font-family: ui-monospace, monospace; white-space: pre; }
td.w { width: 1.6em; height: 1.6em; padding: 0; }
"""


def _shade(value: float) -> str:
    level = max(0.0, min(1.0, value))
    return f"rgb({int(255 - 200 * level)},{int(255 - 120 * level)},255)"


def heatmap(tokens: list[str], weights: list[list[float]]) -> str:
    """A query (rows) x key (columns) table of attention weights; hover a cell for its value."""
    head = "".join(f'<th class="key tok">{visible(t)}</th>' for t in tokens)
    rows = []
    for q, row in enumerate(weights):
        cells = "".join(
            f'<td class="w" data-query="{q}" data-key="{k}" data-weight="{w:.4f}" style="background:{_shade(w)}" '
            f'title="{escape(tokens[q], quote=True)} -> {escape(tokens[k], quote=True)}: {w:.3f}"></td>'
            for k, w in enumerate(row)
        )
        rows.append(f'<tr><th class="tok">{visible(tokens[q])}</th>{cells}</tr>')
    return f'<table class="heatmap"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def overview(name: str, scores: list[list[float]]) -> str:
    """A layers x heads table of one score (entropy, a role score ...)."""
    n_heads = len(scores[0]) if scores else 0
    head = "".join(f"<th>H{h}</th>" for h in range(n_heads))
    peak = max((abs(v) for row in scores for v in row), default=1.0) or 1.0
    rows = "".join(
        f"<tr><th>L{layer}</th>"
        + "".join(
            f'<td data-layer="{layer}" data-head="{h}" style="background:{_shade(abs(v) / peak)}">{v:.2f}</td>'
            for h, v in enumerate(row)
        )
        + "</tr>"
        for layer, row in enumerate(scores)
    )
    attribute = escape(name, quote=True)
    return f'<table class="overview" data-score="{attribute}"><tr><th>{escape(name)}</th>{head}</tr>{rows}</table>'


def render_attention_html(result: LayerAttention, *, title: str) -> str:
    """The report of one `LayerAttention` as one HTML document."""
    caption = f"layer {result.layer}, " + (f"head {result.head}" if result.head is not None else "mean over heads")
    overviews = {"entropy (nats)": result.entropy, "sink mass": result.sink_mass}
    overviews.update({f"{name} score": scores for name, scores in result.roles.items()})
    tables = "".join(f"<h3>{escape(name)}</h3>{overview(name, scores)}" for name, scores in overviews.items())
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{_STYLE}</style>'
        f"</head><body><h1>{escape(title)}</h1>"
        f'<p>Prompt: <span class="tok">{escape(result.prompt)}</span></p>'
        f"<h2>{escape(caption)}</h2>{heatmap(result.tokens, result.shown())}"
        f"<h2>Layers x heads</h2>{tables}</body></html>\n"
    )
