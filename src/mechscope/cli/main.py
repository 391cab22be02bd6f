"""``mechscope``: inspect and change Hugging Face language models from the shell.

Every command prints a table (or ``--json``). Errors caused by input print one line and exit with
status 2; a check that fails exits with status 1.

This module only assembles the sub-apps, one module each. Those without a name (models, lens,
attention, causal) add their commands at the top level: ``mechscope analyze``, not ``mechscope lens
analyze``. Library imports stay inside the commands, so ``mechscope --help`` imports no torch.
"""

from __future__ import annotations

import typer

from mechscope.cli import (
    attention,
    causal,
    circuit,
    circuit_analysis,
    circuit_data,
    circuit_probes,
    concepts,
    lens,
    models,
    moe,
    sae,
    sae_edit,
    sae_read,
    sae_train,
    steer_compare,
    steer_rollouts,
    steer_search,
    steer_train,
    steering,
    ui,
    weights,
)

app = typer.Typer(
    name="mechscope",
    help="Look inside any Hugging Face language model and change it.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(models.app)
app.add_typer(lens.app)
app.add_typer(attention.app)
app.add_typer(causal.app)
app.add_typer(weights.app, name="weights")
circuit_data.register(circuit.app)  # circuit dataset, collect
circuit_probes.register(circuit.app)  # circuit probes run, init
circuit_analysis.register(circuit.app)  # circuit analyze, directions, visualize, steer
app.add_typer(circuit.app, name="circuit")
app.add_typer(moe.app, name="moe")
app.add_typer(concepts.app, name="concepts")
steer_train.register(steering.steer_app)  # steer train, lr-sweep
steer_rollouts.register(steering.steer_app)  # steer rollouts
steer_compare.register(steering.steer_app)  # steer compare
steer_search.register(steering.steer_app)  # steer search
app.add_typer(steering.steer_app, name="steer")
app.add_typer(steering.directions_app, name="directions")
# sae sub-commands register here (one line per module)
sae_train.register(sae.app)  # sae train
sae_read.register(sae.app)  # sae evaluate, features, top-examples
sae_edit.register(sae.app)  # sae steer, ablate, links
app.add_typer(sae.app, name="sae")
app.add_typer(ui.app)


def main() -> None:
    """Run the command line (``mechscope.cli.entry.main`` wraps this for the console script)."""
    from mechscope.cli.entry import main as entry

    entry()
