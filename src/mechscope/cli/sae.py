"""``mechscope sae``: train, evaluate, read and edit sparse autoencoders on any model.

The commands join this sub-app from their own modules (`mechscope.cli.sae_train`, `mechscope.cli.sae_read`,
`mechscope.cli.sae_edit`); `mechscope.cli.main` registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Sparse autoencoders (SAELens's layout): train, evaluate, read features, steer and ablate them.",
    no_args_is_help=True,
)

SaeOpt = Annotated[Path, typer.Option("--sae", help="The SAE folder (cfg.json + sae_weights.safetensors).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run an SAE made for another model of the same width.")]
