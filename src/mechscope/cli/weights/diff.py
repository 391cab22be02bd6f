"""``mechscope weights diff``: how a fine-tuned checkpoint differs from its base, tensor by tensor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Column

from mechscope.cli.options import DeviceOpt, JsonOpt, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_table, write_text_output

if TYPE_CHECKING:
    from mechscope.weights.diff_results import WeightDiff

_CHECKPOINT = "Folder, weight file, HF cache folder or hub id org/name."


@one_line_errors
def diff_command(
    base: Annotated[str, typer.Option("--base", help=f"Base checkpoint: {_CHECKPOINT}")],
    finetuned: Annotated[str, typer.Option("--finetuned", help=f"Fine-tuned checkpoint: {_CHECKPOINT}")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Per-tensor table: .csv, .jsonl or .parquet.")],
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    top: Annotated[int, typer.Option("--top", help="Most-changed tensors and layers to show.")] = 10,
    top_k: Annotated[int, typer.Option("--top-k", help="Singular values of each difference to keep.")] = 5,
    rank_rtol: Annotated[
        float | None, typer.Option("--rank-rtol", help="Relative rank tolerance (default: numpy's rule).")
    ] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare a base and a fine-tuned checkpoint tensor by tensor, streaming one pair at a time.

    Example: mechscope weights diff --base base/ --finetuned tuned/ --out diff.csv --html diff.html
    """
    from mechscope.weights.diff import diff_checkpoints
    from mechscope.weights.diff_export import table_format, write_diff_table

    table_format(out)  # a bad suffix or path fails before the long part
    check_outputs(out, html)
    result = diff_checkpoints(base, finetuned, top_k=top_k, rank_rtol=rank_rtol, device=device, progress=True)
    write_diff_table(result, out)
    if html is not None:
        from mechscope.viz.weights_diff_report import render_weights_diff_html

        write_text_output(html, render_weights_diff_html(result, top=top))
    if as_json:
        print_json(result)
        return
    _print_diff(result, top)
    console.print(f"wrote {escape(str(out))}" + (f" and {escape(str(html))}" if html else ""))


def _print_diff(result: WeightDiff, top: int) -> None:
    """The most-changed tensors and the most-changed layers."""
    tensor_columns = [Column(name, no_wrap=True) for name in ("layer", "block", "rel. change", "cosine", "rank")]
    tensors = [
        [
            escape(p.param_name),
            "" if p.layer_index is None else str(p.layer_index),
            p.block_type,
            f"{p.relative_change:.4g}",
            f"{p.cosine:.6f}",
            str(p.rank),
        ]
        for p in result.ranked_params(top)
    ]
    # Tensor names are wrapped, never cut: they must stay copyable.
    title = f"Most-changed tensors ({len(result.params)} compared)"
    print_table(title, [Column("tensor", overflow="fold"), *tensor_columns], tensors)
    layer_columns = [Column(name, no_wrap=True) for name in ("layer", "pooled rel. change", "mean", "max")]
    layers = [
        [
            str(s.layer_index),
            *(f"{v:.4g}" for v in (s.pooled_relative_change, s.mean_relative_change, s.max_relative_change)),
            escape(s.most_changed),
        ]
        for s in result.ranked_layers(top)
    ]
    print_table("Most-changed layers", [*layer_columns, Column("most changed tensor", overflow="fold")], layers)
