"""A self-contained HTML table of an ablation sweep: layers down, heads or experts across, escaped text."""

from __future__ import annotations

from html import escape

from mechscope.causal.results import AblationResult


def _shade(change: float) -> str:
    level = max(0.0, min(1.0, abs(change)))
    return f"rgb(255,{int(255 - 150 * level)},{int(255 - 150 * level)})"


def render_ablation_html(result: AblationResult, *, model: str = "") -> str:
    """One row per layer; a cell per ablated component with the metric change (or the criterion and text)."""
    layers = sorted({e.layer for e in result.effects})
    indices = sorted({e.index for e in result.effects if e.index is not None})
    columns: list[int | None] = list(indices) if indices else [None]
    cell = {(e.layer, e.index): e for e in result.effects}
    head = "".join(f"<th>{'' if i is None else i}</th>" for i in columns)
    rows = []
    for layer in layers:
        tds = []
        for index in columns:
            effect = cell.get((layer, index))
            if effect is None:
                tds.append("<td></td>")
            elif effect.delta is not None:
                tds.append(
                    f'<td data-layer="{layer}" data-index="{index}" data-delta="{effect.delta:.4f}" '
                    f'style="background:{_shade(effect.delta)}">{effect.delta:+.3f}</td>'
                )
            else:
                text = escape(effect.text or "", quote=True)
                tds.append(f'<td data-layer="{layer}" title="{text}">{escape(str(effect.criterion))}</td>')
        rows.append(f"<tr><th>L{layer}</th>{''.join(tds)}</tr>")
    clean = (
        f"clean metric {result.clean_metric:.4f}"
        if result.clean_metric is not None
        else f"clean criterion {result.clean_criterion}: {escape(result.clean_text or '')}"
    )
    title = f"mechscope ablation: {result.method} {result.component}" + (f" ({model})" if model else "")
    partial = "<p><b>Partial result: the sweep was interrupted.</b></p>" if result.partial else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2em}td,th{border:1px solid #ddd;padding:3px 6px;"
        "text-align:center}table{border-collapse:collapse}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>Prompt: {escape(result.prompt)}</p><p>{clean}</p>{partial}"
        f"<table><tr><th>layer</th>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )
