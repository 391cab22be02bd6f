"""Token text as people read it: whitespace made visible (``␣`` space, ``⏎`` newline, ``⇥`` tab).

Tokens are user data; this only makes their whitespace visible. Each output escapes for its medium (HTML in
`mechscope.viz`, rich markup in the CLI). Imports nothing of mechscope.

Examples:
    >>> show_whitespace(" Paris\\n")
    '␣Paris⏎'
"""

from __future__ import annotations


def show_whitespace(token: str) -> str:
    """``token`` with each space, newline and tab replaced by a visible mark."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
