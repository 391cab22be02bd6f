"""``mechscope moe vocab``: the tokens each expert promotes and suppresses through the unembedding."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.moe.basics import DEFAULT_MODEL
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_line, print_table, visible, write_text_output

if TYPE_CHECKING:
    from mechscope.moe.vocab_results import VocabContribution, VocabReadout

#: Tokens shown per list in the terminal table (``--json`` and ``--html`` have all ``--top-k``).
_SHOWN = 5


def register(app: typer.Typer) -> None:
    """Adds ``vocab`` to ``app``."""
    app.command("vocab")(one_line_errors(model_options(default=DEFAULT_MODEL)(vocab)))


def vocab(
    model: ModelOptions,
    layer: Annotated[
        list[int] | None, typer.Option("--layer", help="An MoE layer (repeat for more; default: every MoE layer).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Tokens listed each way per expert.")] = 30,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Corpus file: one prompt per line.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeat for more).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")] = 16,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page of every expert.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per expert, the tokens its output promotes and suppresses (direct logits), from weights and a corpus.

    Without a corpus only the weights-only read-out is computed.

    Example: mechscope moe vocab --top-k 10 --prompts corpus.txt
    """
    from mechscope.cli.inputs import at_least, optional_corpus
    from mechscope.moe.vocab import vocab as contribution

    check_outputs(out, html)
    at_least(batch_size, 1, "--batch-size")
    at_least(top_k, 1, "--top-k")
    corpus = optional_corpus(prompts, prompt)
    lm = model.load()
    result = contribution(lm, layers=layer, top_k=top_k, prompts=corpus, batch_size=batch_size, progress=not as_json)
    if out is not None:
        write_text_output(out, result.model_dump_json(indent=2))
    if html is not None:
        from mechscope.viz.moe_vocab_report import render_vocab_html

        write_text_output(html, render_vocab_html(result))
    if as_json:
        print_json(result)
        return
    _print_vocab(result)
    for written in (out, html):
        if written is not None:
            print_line(f"wrote {written}")


def _tokens(readout: VocabReadout, promoted: bool) -> str:
    listed = readout.promoted if promoted else readout.suppressed
    return " ".join(visible(t.token) for t in listed[:_SHOWN])


def _print_vocab(result: VocabContribution) -> None:
    """One table per layer: each expert's weights read-out and, under it, its corpus read-out and agreement."""
    columns: list[str | Column] = [Column("expert", justify="right"), "from", Column("|v|", justify="right")]
    columns += ["promoted", "suppressed"]
    corpus = result.prompts > 0
    if corpus:
        columns.append("agreement")
    shown = min(_SHOWN, result.top_k)
    for layer in result.layers:
        rows = []
        for r in layer.experts:
            rows.append([f"E{r.expert}", "weights", f"{r.weights.norm:.3g}", _tokens(r.weights, True)])
            rows[-1] += [_tokens(r.weights, False), *([""] if corpus else [])]
            if not corpus:
                continue
            if r.corpus is None:
                rows.append(["", "corpus", "-", "(no token routed)", "", ""])
                continue
            agreement = f"r {_number(r.agreement)} (others {_number(r.others_agreement)}), top-{result.top_k} "
            agreement += f"overlap {r.overlap}"
            rows.append(["", f"corpus ({r.routed})", f"{r.corpus.norm:.3g}", _tokens(r.corpus, True)])
            rows[-1] += [_tokens(r.corpus, False), agreement]
        pair = layer.agreement()
        mean = "" if pair is None else f"; mean r {pair[0]:.2f} vs others {pair[1]:.2f}"
        print_table(f"layer {layer.layer}: first {shown} of {result.top_k} tokens each way{mean}", columns, rows)
    where = f"a corpus of {result.tokens} tokens" if corpus else "the weights only (give --prompts for a corpus)"
    console.print(f"direct logits {result.readout}, from {where}; r = Pearson over the vocabulary")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
