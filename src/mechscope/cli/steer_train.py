"""``mechscope steer train`` and ``mechscope steer lr-sweep``: trained steering vectors (issue 18)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json, print_table

DataOpt = Annotated[Path, typer.Option("--data", help="JSONL of {messages} or {prompt, completion} records.")]
LayerOpt = Annotated[int, typer.Option("--layer", help="Add the vector at resid_post of this layer.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Passes over the training split.")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="constant or cosine (after warm-up).")]
ValTokensOpt = Annotated[int, typer.Option("--val-tokens", help="Completion tokens held out for validation.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split and the shuffling.")]
PrefixOpt = Annotated[
    str | None, typer.Option("--prompted-prefix", help="Prefix / system prompt of the prompted baseline.")
]
MaxLenOpt = Annotated[int | None, typer.Option("--max-length", help="Truncate examples to this many tokens.")]
PositionsOpt = Annotated[str, typer.Option("--positions", help="all, prompt or completion.")]


def _echo(text: str) -> None:
    print(text, file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Adds ``train`` and ``lr-sweep`` to the ``steer`` sub-app."""
    app.command("train")(steer_train)
    app.command("lr-sweep")(steer_lr_sweep)


@one_line_errors
@model_options
def steer_train(
    data: DataOpt,
    layer: LayerOpt,
    model: ModelOptions,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (vector, config, log, state).")],
    epochs: EpochsOpt = 5,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate of AdamW.")] = 1.0,
    schedule: ScheduleOpt = "cosine",
    warmup: Annotated[float, typer.Option("--warmup", help="Share of the steps for linear warm-up.")] = 0.05,
    val_tokens: ValTokensOpt = 10_000,
    patience: Annotated[int | None, typer.Option("--patience", help="Early stopping after N worse epochs.")] = None,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Batches per optimizer step.")] = 1,
    batch_size: BatchOpt = 8,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Save memory.")] = False,
    init: Annotated[str | None, typer.Option("--init", help="Start from a run folder or a direction file.")] = None,
    prompted_prefix: PrefixOpt = None,
    positions: PositionsOpt = "all",
    max_length: MaxLenOpt = None,
    seed: SeedOpt = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a steering vector on the completions of --data; writes a compact checkpoint to --out.

    Example: mechscope steer train -m toy --data pirate.jsonl --layer 2 --prompted-prefix "<pirate> " -o runs/pirate
    """
    from mechscope.errors import InputError
    from mechscope.steering.trainer import train

    if init is not None and not Path(init).exists():
        raise InputError(f"--init '{init}' does not exist; give a run folder or a direction file")
    lm = model.load()
    result = train(
        lm,
        data,
        layer=layer,
        out=out,
        epochs=epochs,
        lr=lr,
        schedule=schedule,
        warmup=warmup,
        batch_size=batch_size,
        grad_accum=grad_accum,
        val_tokens=val_tokens,
        patience=patience,
        seed=seed,
        init=init,
        positions=positions,
        grad_checkpointing=grad_checkpointing,
        prompted_prefix=prompted_prefix,
        max_length=max_length,
        progress=not as_json,
        resume=resume,
        echo=_echo,
    )
    if as_json:
        print_json(result)
        return
    rows = [
        [str(r.epoch), f"{r.train_loss:.4f}", "-" if r.val_ppl is None else f"{r.val_ppl:.3f}", f"{r.norm:.3f}"]
        for r in result.history
    ]
    print_table(f"steering vector at resid_post.{result.layer}", ["epoch", "train loss", "val ppl", "norm"], rows)

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    console.print(
        f"val ppl: vanilla {show(result.vanilla_ppl)}, prompted {show(result.prompted_ppl)}, "
        f"steered {show(result.steered_ppl)} (best epoch {result.best_epoch}); saved to {result.out}"
    )


@one_line_errors
@model_options
def steer_lr_sweep(
    data: DataOpt,
    layer: LayerOpt,
    model: ModelOptions,
    lrs: Annotated[str, typer.Option("--lrs", help="Comma-separated learning rates.")] = "1,0.1,0.01,0.001,0.0001",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for one run folder per LR.")] = None,
    epochs: EpochsOpt = 5,
    patience: Annotated[int, typer.Option("--patience", help="Early stopping per run.")] = 1,
    schedule: ScheduleOpt = "constant",
    val_tokens: ValTokensOpt = 10_000,
    batch_size: BatchOpt = 8,
    prompted_prefix: PrefixOpt = None,
    max_length: MaxLenOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train one vector per learning rate on one loaded model; one metrics row per LR.

    Example: mechscope steer lr-sweep -m toy --data pirate.jsonl --layer 2 --lrs 1,0.1,0.01
    """
    from mechscope.cli.inputs import parse_numbers
    from mechscope.errors import InputError
    from mechscope.steering.trainer import lr_sweep

    rates = parse_numbers(lrs, "--lrs")
    bad = [rate for rate in rates if rate <= 0]
    if bad:
        raise InputError(f"--lrs must all be positive, got {bad[0]:g}")
    if out is not None and out.is_dir() and any(out.iterdir()):
        raise InputError(f"'{out}' is not empty; give a new folder for the sweep")
    lm = model.load()
    sweep = lr_sweep(
        lm,
        data,
        layer=layer,
        lrs=rates,
        out=out,
        epochs=epochs,
        patience=patience,
        schedule=schedule,
        val_tokens=val_tokens,
        batch_size=batch_size,
        prompted_prefix=prompted_prefix,
        max_length=max_length,
        seed=seed,
        progress=not as_json,
        echo=_echo,
    )
    if as_json:
        print_json(sweep)
        return

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [
        [f"{r.lr:g}", str(r.epochs_run), str(r.best_epoch), "yes" if r.stopped_early else "no", show(r.steered_ppl)]
        for r in sweep.rows
    ]
    rows = [[*row, f"{r.norm:.3f}"] for row, r in zip(rows, sweep.rows, strict=True)]
    columns = ["lr", "epochs", "best epoch", "stopped early", "steered val ppl", "norm"]
    print_table(f"LR sweep at resid_post.{sweep.layer}", columns, rows)
    console.print(f"val ppl: vanilla {show(sweep.vanilla_ppl)}, prompted {show(sweep.prompted_ppl)}")
