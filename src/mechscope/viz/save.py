"""Saving a figure from a report: the one script every page carries, and the buttons it answers.

Each figure's caption has a "download SVG" and a "download PNG" button. The script below, the same fixed
text on every page, serialises the figure's own SVG element when a button is clicked: as an SVG file, or
drawn on a canvas at twice its size as a PNG. It also shows the value under the pointer on raster heatmaps
(an ``<image data-values="path">``), reading it from the page's result JSON (``a[data-result]``) and
writing it with ``textContent`` only. It needs no network and holds no data, so a page stays small
(no second copy of each figure in a ``data:`` link) and opens offline. Pages allow only this script, by its
hash, in their Content-Security-Policy: markup injected through an unescaped string would not run.

>>> buttons = save_buttons("attention-L1-H0.svg")
>>> 'data-save="svg"' in buttons and 'data-save="png"' in buttons and 'data-file="attention-L1-H0"' in buttons
True
>>> SCRIPT_HASH.startswith("sha256-")
True
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

#: The page's script: saving figures (``button[data-save]``) and hover values of raster heatmaps.
SCRIPT = """(function () {
  "use strict";
  function save(href, name) {
    var link = document.createElement("a");
    link.href = href;
    link.download = name;
    link.style.display = "none";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }
  function chart(button) {
    var figure = button.closest("figure");
    return figure ? figure.querySelector("svg") : null;
  }
  function serialise(svg) {
    return '<?xml version="1.0" encoding="utf-8"?>\\n' + new XMLSerializer().serializeToString(svg);
  }
  function png(svg, name) {
    var scale = 2, width = svg.width.baseVal.value, height = svg.height.baseVal.value;
    var image = new Image();
    image.onload = function () {
      var canvas = document.createElement("canvas");
      canvas.width = Math.ceil(width * scale);
      canvas.height = Math.ceil(height * scale);
      var context = canvas.getContext("2d");
      context.fillStyle = "#fff";
      context.fillRect(0, 0, canvas.width, canvas.height);
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      save(canvas.toDataURL("image/png"), name);
    };
    image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(serialise(svg));
  }
  var result = null, tip = null;
  function lookup(path) {
    if (result === null) {
      var link = document.querySelector("a[data-result]"), href = link ? link.getAttribute("href") : "";
      result = link ? JSON.parse(decodeURIComponent(href.slice(href.indexOf(",") + 1))) : {};
    }
    return path.split(".").reduce(function (value, key) { return value == null ? value : value[key]; }, result);
  }
  function hover(event) {
    var image = event.target.closest ? event.target.closest("image[data-values]") : null;
    var values = image ? lookup(image.getAttribute("data-values")) : null;
    if (!tip) {
      tip = document.createElement("div");
      tip.className = "hover-tip";
      document.body.appendChild(tip);
    }
    tip.style.display = "none";
    if (!values || !values.length) return;
    var box = image.getBoundingClientRect();
    var r = Math.floor(((event.clientY - box.top) / box.height) * values.length);
    var c = Math.floor(((event.clientX - box.left) / box.width) * values[0].length);
    if (r < 0 || c < 0 || r >= values.length || c >= values[r].length) return;
    var rows = lookup(image.getAttribute("data-rows")) || [];
    var columns = lookup(image.getAttribute("data-columns")) || [];
    var where = JSON.stringify(rows[r]) + " \u2192 " + JSON.stringify(columns[c]);
    tip.textContent = where + ": " + values[r][c].toFixed(3);
    tip.style.left = event.pageX + 12 + "px";
    tip.style.top = event.pageY + 12 + "px";
    tip.style.display = "block";
  }
  document.addEventListener("mousemove", hover);
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-save]") : null;
    var svg = button ? chart(button) : null;
    if (!svg) return;
    var kind = button.getAttribute("data-save"), name = button.getAttribute("data-file") + "." + kind;
    if (kind === "png") png(svg, name);
    else save(URL.createObjectURL(new Blob([serialise(svg)], { type: "image/svg+xml" })), name);
  });
})();"""

#: The CSP source that allows exactly `SCRIPT`.
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")

#: What a page may load or run: its own styles, images it makes itself (the PNG export), this script.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'unsafe-inline'; img-src data: blob:; script-src '{SCRIPT_HASH}'"
)


def save_buttons(filename: str) -> str:
    """The two buttons that save the enclosing figure as ``<stem>.svg`` and ``<stem>.png``."""
    stem = escape(filename.removesuffix(".svg"), quote=True)
    return "".join(
        f'<button type="button" class="save" data-save="{kind}" data-file="{stem}">download {kind.upper()}</button>'
        for kind in ("svg", "png")
    )
