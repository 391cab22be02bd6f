"""``mechscope weights analyze``."""

from __future__ import annotations

from mechscope.cli.weights import weights_app  # noqa: F401
