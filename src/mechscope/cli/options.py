"""Option groups shared by CLI commands, defined once."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Hub id, local save_pretrained folder, or bundled organism name.")
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default cpu).")]
DeviceMapOpt = Annotated[str | None, typer.Option("--device-map", help="Spread a large model over devices, e.g. auto.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
RemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Run the repo's own modelling code (off by default).")
]
AttnOpt = Annotated[str | None, typer.Option("--attn", help="Attention implementation: eager, sdpa ...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
