"""``mechscope moe compression``: how alike one layer's experts are, and what merging or an SVD overlay costs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.moe.basics import DEFAULT_MODEL
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_line, print_table, write_text_output
from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.moe.compression_results import Compression, Merge, Overlay

_MERGE = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")


def register(app: typer.Typer) -> None:
    """Adds ``compression`` to ``app``."""
    app.command("compression")(one_line_errors(model_options(default=DEFAULT_MODEL)(compression)))


def merge_pair(text: str) -> tuple[int, int]:
    """``--merge A,B``: two different expert numbers.

    Raises:
        InputError: not two numbers separated by a comma, or the same expert twice.
    """
    found = _MERGE.match(text)
    if found is None:
        raise InputError(f"bad --merge '{text}'; write two experts separated by a comma, e.g. --merge 0,3")
    a, b = int(found.group(1)), int(found.group(2))
    if a == b:
        raise InputError(f"--merge {text} names expert {a} twice; a merge needs two different experts")
    return a, b


def compression(
    model: ModelOptions,
    layer: Annotated[int | None, typer.Option("--layer", help="The MoE layer (default: the first one).")] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Aligned weight cosine a merge candidate must reach.")
    ] = 0.8,
    output_threshold: Annotated[
        float | None,
        typer.Option("--output-threshold", help="Output cosine on the corpus it must reach (default: --threshold)."),
    ] = None,
    cold_threshold: Annotated[
        float, typer.Option("--cold-threshold", help="Experts with a share of tokens below this are cold.")
    ] = 0.01,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Corpus file: one prompt per line.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeat for more).")] = None,
    rank: Annotated[
        list[int] | None,
        typer.Option("--rank", help="Overlay rank to report (repeat); with --verify each one is applied and measured."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Apply the merge (or --rank overlays) in memory and measure the corpus.")
    ] = False,
    merge: Annotated[
        str | None, typer.Option("--merge", help="A,B: the merge --verify measures (default: the most similar pair).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")] = 16,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page of the result.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Expert similarity (raw vs aligned weights, outputs), merge candidates, cold experts, SVD overlay.

    Example: mechscope moe compression --layer 1 --prompts corpus.txt --verify --rank 32
    """
    from mechscope.cli.inputs import at_least, finite, optional_corpus
    from mechscope.moe.compression import compression as measure
    from mechscope.moe.compression_results import Merge, Overlay
    from mechscope.moe.info import require_moe

    check_outputs(out, html)
    at_least(batch_size, 1, "--batch-size")
    for value, option in ((threshold, "--threshold"), (output_threshold, "--output-threshold")):
        if value is not None and not -1 <= finite(value, option) <= 1:
            raise InputError(f"{option} is a cosine in [-1, 1], got {value}")
    pair = None if merge is None else merge_pair(merge)
    if pair is not None and not verify:
        raise InputError("--merge names the merge that --verify measures; add --verify")
    for r in rank or []:
        if r < 1:
            raise InputError(f"overlay rank {r} is out of range; a rank is at least 1 (up to the experts' full rank)")
    corpus = optional_corpus(prompts, prompt) or []
    if verify and not corpus:
        raise InputError("--verify measures the loss on a corpus; give --prompts FILE (one prompt per line) or -p")
    edits: list[Merge | Overlay] = [] if pair is None else [Merge(experts=pair)]
    edits += [Overlay(rank=r) for r in rank or []] if verify else []
    lm = model.load()
    require_moe(lm)
    result = measure(
        lm,
        lm.arch.moe_layers[0] if layer is None else layer,
        prompts=corpus or None,
        weight_threshold=threshold,
        output_threshold=threshold if output_threshold is None else output_threshold,
        cold_threshold=cold_threshold,
        ranks=rank or None,
        verify=(edits or "best") if verify else None,
        batch_size=batch_size,
        progress=not as_json,
    )
    if out is not None:
        write_text_output(out, result.model_dump_json(indent=2))
    if html is not None:
        from mechscope.viz.moe_compression_report import render_compression_html

        write_text_output(html, render_compression_html(result))
    if as_json:
        print_json(result)
        return
    print_compression(result)
    for written in (out, html):
        if written is not None:
            print_line(f"wrote {written}")


def _cos(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_compression(result: Compression) -> None:
    """The result as tables: pairs, overlay by rank, measured edits; candidates and cold experts as lines."""
    candidates = set(result.merge_candidates or [])
    columns: list[str | Column] = [
        "pair",
        *(Column(name, justify="right") for name in ("raw cos", "aligned cos", "output cos", "tokens")),
        "candidate",
    ]
    rows = [
        [
            f"{p.a}+{p.b}",
            _cos(p.raw_cosine),
            _cos(p.aligned_cosine),
            _cos(p.output_cosine),
            str(p.tokens),
            "yes" if (p.a, p.b) in candidates else "",
        ]
        for p in result.pairs
    ]
    title = (
        f"layer {result.layer}: {result.n_experts} experts x {result.hidden} hidden units, d_model {result.d_model} "
        f"({result.tokens} corpus tokens)"
    )
    print_table(title, columns, rows)
    if result.aligned_cosine_null is not None:
        console.print(
            f"aligned cosine of unrelated experts with these weight statistics (null): {result.aligned_cosine_null:.3f}"
        )
    if result.merge_candidates is None:
        console.print("merge candidates and cold experts need a corpus (--prompts FILE or -p)")
    else:
        names = ", ".join(f"{a}+{b}" for a, b in result.merge_candidates) or "none"
        console.print(
            f"merge candidates (aligned >= {result.weight_threshold:g} and output >= {result.output_threshold:g}): "
            f"{names}"
        )
        shares = " ".join(f"E{e} {s:.3f}" for e, s in enumerate(result.share or []))
        cold = ", ".join(map(str, result.cold or [])) or "none"
        console.print(f"share of tokens: {shares}; cold (below {result.cold_threshold:g}): {cold}")
    overlay_rows = [
        [
            str(r.rank),
            f"{r.relative_error:.4f}",
            f"{r.unaligned_error:.4f}",
            f"{r.max_expert_error:.4f}",
            str(r.parameters),
            f"{100 * r.savings:+.1f}%",
        ]
        for r in result.overlay
    ]
    headers = ("rank", "rel. error", "unaligned base", "worst expert", "parameters", "savings")
    print_table(
        f"SVD overlay: shared base + rank-r residuals (base alone: {result.base_error:.4f}; "
        f"experts: {result.original_parameters} parameters)",
        [Column(name, justify="right") for name in headers],
        overlay_rows,
    )
    if result.verified:
        verified = [
            [
                v.edit.label(),
                f"{v.base_loss:.4f}",
                f"{v.edited_loss:.4f}",
                f"{v.loss_change:+.4f}",
                f"{v.top1_agreement:.3f}",
                f"{v.kl:.4f}",
            ]
            for v in result.verified
        ]
        measured = ("loss", "edited loss", "change", "top-1 agreement", "KL")
        print_table(
            f"measured on the corpus ({result.verified[0].targets} next tokens)",
            ["edit", *(Column(name, justify="right") for name in measured)],
            verified,
        )
