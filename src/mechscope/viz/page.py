"""The one document shell of the reports: doctype, charset, title, the shared stylesheet, a header, sections.

A page names the model and what it shows at the top, then has one ``<section>`` per figure or table. Nothing
comes from the network, so the page opens offline; the only script is the fixed figure-saving one of
`mechscope.viz.save`, and the page's Content-Security-Policy allows that script alone (by its hash) and no
fetch at all. Every string given here is escaped, except the section bodies, which the chart kit
(`mechscope.viz.charts`) has already escaped.

>>> html = render_page("lens <demo>", model="toy", shows="what each layer predicts", sections=[("A", "<p>x</p>")])
>>> html.startswith("<!DOCTYPE html>") and "lens &lt;demo&gt;" in html and "<section" in html
True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

from mechscope.viz.save import CONTENT_SECURITY_POLICY, SCRIPT

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1em; }
header .model, .tok { font-family: ui-monospace, monospace; white-space: pre; }
header .shows { color: #555; }
section { margin-bottom: 2em; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 1em; }
td, th { border: 1px solid #ddd; padding: 2px 5px; text-align: center; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th.key, th.token { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; }
td.cell { min-width: 3em; }
.legend, .legend-scale { margin: 0.4em 0 0.8em; font-size: 12px; color: #555; }
.legend-scale svg { vertical-align: middle; border: 1px solid #ccc; }
figure { margin: 0 0 1em; display: inline-block; vertical-align: top; max-width: 100%; }
figcaption { font-size: 12px; color: #555; }
.multiples { display: flex; flex-wrap: wrap; gap: 0.8em; }
a.download, button.save { font-size: 12px; margin-right: 0.8em; }
button.save { margin-left: 0.4em; padding: 0 0.4em; cursor: pointer; }
figure.multiple { cursor: zoom-in; }
figure.multiple:focus { outline: 2px solid #1f77b4; }
figure.multiple:focus > svg { zoom: 2.5; }
.downloads { margin: 0.5em 0 1em; }
.hover-tip { position: absolute; display: none; background: #fff; border: 1px solid #999; padding: 2px 5px;
  font: 12px ui-monospace, monospace; white-space: pre; pointer-events: none; z-index: 10; }
"""


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"


def render_page(
    title: str,
    *,
    model: str,
    shows: str,
    sections: Sequence[tuple[str, str]],
    intro: str = "",
    downloads: str = "",
) -> str:
    """One HTML document: ``sections`` are ``(heading, body)`` with bodies already escaped HTML.

    ``intro`` (escaped HTML) follows the header, ``downloads`` (links from the chart kit) close it.
    """
    parts = []
    for heading, body in sections:
        parts.append(f'<section id="{_anchor(heading)}"><h2>{escape(heading)}</h2>{body}</section>')
    model_line = f'<p>Model: <span class="model">{escape(model)}</span></p>' if model else ""
    links = f'<p class="downloads">{downloads}</p>' if downloads else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f'<body><header><h1>{escape(title)}</h1>{model_line}<p class="shows">{escape(shows)}</p>{links}</header>'
        f"{intro}{''.join(parts)}<script>{SCRIPT}</script></body></html>\n"
    )
