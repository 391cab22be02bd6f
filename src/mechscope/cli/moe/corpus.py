"""``mechscope moe specialization|context``: what the experts specialise in, and whether context moves a token."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.moe.basics import DEFAULT_MODEL
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_line, print_table, visible, write_text_output

if TYPE_CHECKING:
    from mechscope.moe.specialization_results import ContextRouting, ExpertShares, Specialization

#: How many experts a table row names, largest share first (a model may have 128).
SHOWN = 3
LayerOpt = Annotated[list[int] | None, typer.Option("--layer", help="A MoE layer (repeat for more; default: all).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")]


def register(app: typer.Typer) -> None:
    """Adds ``specialization`` and ``context`` to ``app``."""
    app.command("specialization")(one_line_errors(model_options(default=DEFAULT_MODEL)(specialization)))
    app.command("context")(one_line_errors(model_options(default=DEFAULT_MODEL)(context)))


def specialization(
    model: ModelOptions,
    domains: Annotated[
        Path | None,
        typer.Option("--domains", help="Folder of .txt files, one domain each (default: the set for the organisms)."),
    ] = None,
    layer: LayerOpt = None,
    batch_size: BatchOpt = 32,
    specialist_ratio: Annotated[
        float, typer.Option("--specialist-ratio", help="Specialist: largest domain share >= this x its mean share.")
    ] = 2.0,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page (domains x experts).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Domain, token-type and vocabulary specialization of each expert (OLMoE's definitions), per MoE layer.

    Example: mechscope moe specialization --layer 1 --html specialization.html
    """
    from mechscope.cli.inputs import at_least
    from mechscope.moe.domain_sets import default_domains, load_domains
    from mechscope.moe.specialization import specialization as specialise

    check_outputs(out, html)
    at_least(batch_size, 1, "--batch-size")
    chosen = default_domains() if domains is None else load_domains(domains)
    lm = model.load()
    result = specialise(
        lm, chosen, layers=layer, batch_size=batch_size, specialist_ratio=specialist_ratio, progress=not as_json
    )
    if out is not None:
        write_text_output(out, result.model_dump_json(indent=2))
    if html is not None:
        from mechscope.viz.moe_specialization_report import render_specialization_html

        write_text_output(html, render_specialization_html(result))
    if as_json:
        print_json(result)
        return
    _print_specialization(result)
    for written in (out, html):
        if written is not None:
            print_line(f"wrote {written}")


def _top(group: ExpertShares, *, top1: bool = False) -> str:
    share = group.top1_share if top1 else group.topk_share
    return "  ".join(f"E{e} {share[e]:.3f}" for e in group.ranking(top1=top1)[:SHOWN])


def _print_specialization(result: Specialization) -> None:
    """Per layer: domains and token types with their leading experts; then vocabulary and labels per layer."""

    def columns(what: str) -> list[str | Column]:
        # Fresh columns for each table: a rich Column keeps the cells of the table it was drawn in.
        return [Column("layer", justify="right"), what, Column("tokens", justify="right"), "top-k share", "top-1 share"]

    rows = [
        [str(layer.layer), d.name, str(d.tokens), _top(d), _top(d, top1=True)]
        for layer in result.layers
        for d in layer.domains
    ]
    print_table(f"domain specialization (uniform top-k share = {result.uniform:.3f})", columns("domain"), rows)
    type_rows = [
        [str(layer.layer), t.name, str(t.tokens), _top(t), _top(t, top1=True)]
        for layer in result.layers
        for t in layer.token_types
        if t.tokens
    ]
    print_table("token types", columns("type"), type_rows)
    summary = [
        [
            str(layer.layer),
            f"{layer.vocabulary_specialization:.3f}",
            str(layer.token_ids),
            ", ".join(f"E{p.expert} {p.top_domain} x{p.ratio:.2f}" for p in layer.experts if p.label == "specialist")
            or "-",
        ]
        for layer in result.layers
    ]
    print_table(
        "vocabulary specialization and specialists",
        [Column("layer", justify="right"), Column("vocab spec", justify="right"), "token ids", "specialists"],
        summary,
    )
    console.print(
        f"{result.tokens} tokens of {result.prompts} prompts in {len(result.domains)} domains; "
        f"specialist = largest domain top-k share >= {result.specialist_ratio:g} x its mean over domains"
    )


def context(
    token: Annotated[str, typer.Option("--token", help="The token to follow, e.g. ' Paris' (one token).")],
    model: ModelOptions,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Corpus file: one prompt per line.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeat for more).")] = None,
    layer: LayerOpt = None,
    batch_size: BatchOpt = 32,
    as_json: JsonOpt = False,
) -> None:
    """Does one token route the same way in every context? Agreement of its routing across occurrences, per layer.

    Example: mechscope moe context --token " Paris" --prompts corpus.txt
    """
    from mechscope.cli.inputs import at_least, read_corpus
    from mechscope.moe.context import context as follow

    at_least(batch_size, 1, "--batch-size")
    corpus = read_corpus(prompts, prompt)
    result = follow(model.load(), token, corpus, layers=layer, batch_size=batch_size, progress=not as_json)
    if as_json:
        print_json(result)
        return
    _print_context(result)


def _print_context(result: ContextRouting) -> None:
    columns: list[str | Column] = [
        Column("layer", justify="right"),
        Column("modal expert", justify="right"),
        Column("top-1 agreement", justify="right"),
        Column("pairwise top-1", justify="right"),
        Column("top-k Jaccard", justify="right"),
        "first choices",
    ]

    def maybe(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    rows = [
        [
            str(a.layer),
            f"E{a.modal_expert}",
            f"{a.top1_agreement:.3f}",
            maybe(a.top1_pairwise),
            maybe(a.jaccard),
            " ".join(f"E{e}:{c}" for e, c in enumerate(a.top1_counts) if c),
        ]
        for a in result.layers
    ]
    title = (
        f"routing of {visible(result.token)} (id {result.token_id}): {result.occurrences} occurrences "
        f"in {result.contexts} of {result.prompts} prompts"
    )
    print_table(title, columns, rows)
    console.print(
        "top-1 agreement = share of occurrences whose first expert is the modal one; "
        "Jaccard = mean over pairs of occurrences of |A∩B|/|A∪B| of their top-k sets"
    )
