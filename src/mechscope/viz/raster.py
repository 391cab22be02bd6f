"""Heatmaps as pixels: a PNG encoder (zlib and struct, no image library) for figures too dense for one SVG rect
per cell.

An attention page of a 32-head model draws 32 small multiples of ``tokens x tokens`` cells; as SVG rects that
is 32,768 elements for a 32-token prompt and grows with the square of the prompt. Drawn instead as one PNG per
head (one pixel per cell, scaled up with ``image-rendering: pixelated``), a multiple costs a few kilobytes and
the page stays small for long prompts. The image sits inside the figure's SVG, so the figure still downloads
as SVG or PNG.

>>> uri = png_data_uri([[(255, 255, 255), (8, 48, 107)]])
>>> uri.startswith("data:image/png;base64,iVBORw0KGgo")
True
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from collections.abc import Sequence

Pixel = tuple[int, int, int]
_RGB = re.compile(r"rgb\((\d+),(\d+),(\d+)\)")


def rgb(css: str) -> Pixel:
    """The ``(r, g, b)`` of a kit colour, ``rgb(r,g,b)``.

    >>> rgb("rgb(8,48,107)")
    (8, 48, 107)
    """
    match = _RGB.fullmatch(css)
    if match is None:
        raise ValueError(f"not an rgb(...) colour: {css!r}")
    red, green, blue = (int(v) for v in match.groups())
    return red, green, blue


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(pixels: Sequence[Sequence[Pixel]]) -> bytes:
    """An 8-bit RGB PNG of ``pixels[row][column]`` (every row the same length, at least one pixel)."""
    height, width = len(pixels), len(pixels[0]) if pixels else 0
    if not height or not width or any(len(row) != width for row in pixels):
        raise ValueError("a PNG needs a non-empty rectangle of pixels")
    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    )


def png_data_uri(pixels: Sequence[Sequence[Pixel]]) -> str:
    """`png` as a ``data:`` URI, for an SVG ``<image href=...>``."""
    return "data:image/png;base64," + base64.b64encode(png(pixels)).decode("ascii")
