"""The ``mechscope`` console script: the command line, with Ctrl-C at any moment ending in one line.

This module imports nothing heavy, so a Ctrl-C while the CLI itself is still being imported (rich,
typer, later torch inside a command) is caught here too instead of ending in a traceback.
"""

from __future__ import annotations

import sys

#: Exit status of a run stopped by Ctrl-C (the status of every one-line input error).
INTERRUPTED = 2


def main() -> None:
    """Run ``mechscope`` with the process's arguments."""
    try:
        from mechscope.cli.main import app

        app()
    except KeyboardInterrupt:
        print(
            "mechscope: error: interrupted (Ctrl-C) before the command finished; no output was written", file=sys.stderr
        )
        raise SystemExit(INTERRUPTED) from None
