"""``mechscope ui``: explore a model in the browser (a local web app on one loaded model)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from mechscope.cli.options import ModelOptions, model_options, one_line_errors

app = typer.Typer()


@app.command()
@one_line_errors
@model_options
def ui(
    model: ModelOptions,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (default: this machine only).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port (0 picks a free one).")] = 8765,
    public: Annotated[
        bool, typer.Option("--public", help="Allow a --host beyond loopback; every request then needs a token.")
    ] = False,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest direction file accepted.")] = 64,
) -> None:
    """Serve the model at http://127.0.0.1:PORT (lens, attention, patching, steering, ablation, MoE, weights).

    Prints the URL and serves until Ctrl-C; it opens no browser by itself.

    Example: mechscope ui -m toy
    """
    from mechscope.errors import InputError

    try:
        from mechscope.web.server import check_host, listen, serve
    except ImportError as error:  # pragma: no cover - fastapi and uvicorn are the ui extra
        raise InputError("the web app needs FastAPI and uvicorn: pip install 'mechscope[ui]'") from error
    from mechscope.api.analyzer import Analyzer

    if max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be positive, got {max_upload_mb:g}")
    check_host(host, public)  # before the model loads: a refused or busy address costs nothing
    sock = listen(host, port)
    analyzer = Analyzer(model.load())

    def announce(url: str) -> None:
        print(f"mechscope ui: serving {model.model} at {url}  (Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the server is meant to stop
        serve(
            analyzer,
            name=model.model,
            host=host,
            port=port,
            public=public,
            max_upload_bytes=int(max_upload_mb * 2**20),
            announce=announce,
            sock=sock,
        )
