"""What the report tests read from a page's markup without a browser: its figures, its script, its policy."""

from __future__ import annotations

import os
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mechscope.viz.save import CONTENT_SECURITY_POLICY, SCRIPT

SVG = "{http://www.w3.org/2000/svg}"
ROOT = Path(__file__).resolve().parents[1]
_FIGURE = re.compile(r"<figure\b.*?</figure>", re.S)
_SVG = re.compile(r"<svg\b.*?</svg>", re.S)
_SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script>", re.S | re.I)
#: Anything that would make a page load from elsewhere: a src, an http(s) link or style url, an import.
_FETCHES = re.compile(r"""\bsrc\s*=|href\s*=\s*["']?\s*(?:https?:|//)|url\(\s*["']?\s*(?:https?:|//)|@import""", re.I)


def figure_svgs(html: str) -> list[ET.Element]:
    """The SVG drawn in each ``<figure>`` of ``html``, parsed as a standalone XML document (as a download is)."""
    roots = []
    for block in _FIGURE.findall(html):
        drawn = _SVG.search(block)
        assert drawn is not None, block[:200]
        roots.append(ET.fromstring(drawn.group(0)))
    assert all(root.tag == f"{SVG}svg" for root in roots)
    return roots


def save_buttons(html: str) -> list[tuple[str, str]]:
    """Each figure's save buttons as ``(kind, file stem)``."""
    return re.findall(r'<button type="button" class="save" data-save="(\w+)" data-file="([^"]*)"', html)


def assert_self_contained(html: str) -> None:
    """The page runs only the kit's fixed script, allows nothing else by its policy, and fetches nothing."""
    assert _SCRIPT.findall(html) == [SCRIPT]
    assert f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">' in html
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    outside = _FETCHES.search(_SCRIPT.sub("", html))
    assert outside is None, outside


#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """The ``(width, height)`` a PNG file's header (its first chunk, IHDR) states; no image library needed."""
    assert data.startswith(PNG_SIGNATURE), data[:8]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, (length, kind)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def artifacts() -> Path:
    """Where browser tests keep screenshots: ``$MECHSCOPE_TEST_ARTIFACTS``, else ``build/test-artifacts/``."""
    folder = Path(os.environ.get("MECHSCOPE_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def record_trouble(page: Any, problems: list[str]) -> None:
    """Append to ``problems`` every dialog (dismissed), console error and uncaught error of a Playwright page."""

    def dialog(event: Any) -> None:
        problems.append(f"dialog ({event.type}): {event.message}")
        event.dismiss()

    page.on("dialog", dialog)
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))


def artifact_name(request: Any) -> str:
    """The running test's name as a file-name part."""
    return re.sub(r"[^\w.-]+", "-", request.node.name).strip("-")
