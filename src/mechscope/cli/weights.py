"""``mechscope weights ...``: analyse checkpoint files without loading the model.

The sub-commands live in their own modules (one job each) and register themselves on `weights_app`.
"""

from __future__ import annotations

import typer

weights_app = typer.Typer(help="Analyse checkpoint files: statistics, rank, diffs, directions.", no_args_is_help=True)

# Imported for their side effect of registering commands on weights_app; kept below its definition.
from mechscope.cli import weights_analyze, weights_diff, weights_directions  # noqa: E402,F401
