"""``mechscope weights ...``: analyse checkpoint files without loading the model.

Each command lives in its own module and knows nothing of this app; the app registers them here, in the
order ``mechscope weights --help`` lists them.
"""

from __future__ import annotations

import typer

from mechscope.cli.weights.analyze import analyze_command
from mechscope.cli.weights.diff import diff_command
from mechscope.cli.weights.directions import directions_command
from mechscope.cli.weights.download import download_command, verify_command

app = typer.Typer(help="Analyse checkpoint files: statistics, rank, diffs, directions.", no_args_is_help=True)
app.command("analyze")(analyze_command)
app.command("diff")(diff_command)
app.command("download")(download_command)
app.command("verify")(verify_command)
app.command("directions")(directions_command)
