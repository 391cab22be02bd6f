"""Option groups shared by CLI commands, defined once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer

from mechscope.errors import MechscopeError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn a `MechscopeError` into one line on stderr and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MechscopeError as error:
            print(f"mechscope: error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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
