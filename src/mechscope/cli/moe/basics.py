"""``mechscope moe info|trace|utilization``: how a mixture-of-experts model routes its tokens."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.options import (
    AddressOpt,
    BackendOpt,
    JsonOpt,
    ModelOptions,
    WorkersOpt,
    model_options,
    one_line_errors,
)
from mechscope.cli.output import check_outputs, console, print_json, print_line, print_table, visible, write_text_output

if TYPE_CHECKING:
    from mechscope.moe.results import RoutingTrace, Utilization

app = typer.Typer(
    help="Mixture-of-experts models: routing, specialization, expert vocabulary, interventions, compression.",
    no_args_is_help=True,
)

#: The bundled MoE organism: the default model of these commands.
DEFAULT_MODEL = "toy-moe"
#: How the experts' weights are kept, by `MoEInfo.packed_experts`.
_STORAGE = {True: "packed (3-D tensors)", False: "one module each", None: "unknown"}


@app.command("info")
@one_line_errors
@model_options(default=DEFAULT_MODEL)
def info(model: ModelOptions, as_json: JsonOpt = False) -> None:
    """How the model routes: experts, top-k, MoE and dense layers, shared experts and the router's rule.

    Example: mechscope moe info -m toy-moe
    """
    from mechscope.moe.info import moe_info

    result = moe_info(model.load())
    if as_json:
        print_json(result)
        return
    gate = "gated" if result.shared_expert_gated else "ungated"
    shared = f"{result.shared_experts} ({gate})" if result.shared_experts else "none"
    rows = [
        ("family", result.family),
        ("experts", str(result.n_experts)),
        ("top-k", str(result.top_k)),
        ("MoE layers", _layer_list(result.moe_layers)),
        ("dense layers", _layer_list(result.dense_layers)),
        ("shared experts", shared),
        ("router", result.router_rule),
        ("experts stored", _STORAGE[result.packed_experts]),
        ("aux loss coefficient", "n/a" if result.aux_loss_coef is None else f"{result.aux_loss_coef:g}"),
    ]
    print_table(f"mixture of experts: {result.model}", ("", "value"), rows)


@app.command("trace")
@one_line_errors
@model_options(default=DEFAULT_MODEL)
def trace(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to route.")],
    model: ModelOptions,
    layer: Annotated[int | None, typer.Option("--layer", help="One MoE layer (default: every MoE layer).")] = None,
    logits: Annotated[bool, typer.Option("--logits", help="Also keep the router logits (with --json).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The experts each token is routed to on each MoE layer, with their weights and the router's entropy.

    Example: mechscope moe trace -p "The capital of France is" --layer 1
    """
    from mechscope.moe.trace import trace as route_one

    result = route_one(model.load(), prompt, layers=None if layer is None else [layer], with_logits=logits)
    if as_json:
        print_json(result)
        return
    _print_trace(result)


@app.command("heatmap")
@one_line_errors
@model_options(default=DEFAULT_MODEL)
def heatmap(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to route.")],
    model: ModelOptions,
    html: Annotated[Path, typer.Option("--html", help="Where to write the HTML page.")],
    as_json: JsonOpt = False,
) -> None:
    """An HTML page of one prompt's routing: layers x tokens of top expert, its weight, router entropy.

    Example: mechscope moe heatmap -p "def fib(n):" --html routing.html
    """
    from mechscope.moe.trace import trace as route_one
    from mechscope.viz.moe_report import render_trace_html

    check_outputs(html)
    lm = model.load()
    result = route_one(lm, prompt)
    write_text_output(html, render_trace_html(result, model=lm.source))
    if as_json:
        print_json(result)
        return
    print_line(f"wrote {html}")


def _print_trace(result: RoutingTrace) -> None:
    """Tokens x layers: ``expert:weight`` per top-k slot and the router's entropy (H, nats)."""
    columns: list[str | Column] = [Column("pos", justify="right"), "token"]
    columns += [f"layer {routing.layer}" for routing in result.layers]
    rows = [
        [
            str(pos),
            visible(token),
            *(
                " ".join(f"{e}:{w:.2f}" for e, w in zip(r.experts[pos], r.weights[pos], strict=True))
                + f"  H {r.entropy[pos]:.2f}"
                for r in result.layers
            ),
        ]
        for pos, token in enumerate(result.tokens)
    ]
    print_table(f"routing: expert:weight (top-{result.top_k}), H = router entropy (nats)", columns, rows)


@app.command("utilization")
@one_line_errors
@model_options(default=DEFAULT_MODEL)
def utilization(
    model: ModelOptions,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Corpus file: one prompt per line.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeat for more).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")] = 32,
    shard_size: Annotated[
        int | None, typer.Option("--shard-size", help="Prompts per shard (default 4 x --batch-size).")
    ] = None,
    cold_threshold: Annotated[
        float, typer.Option("--cold-threshold", help="Experts with a share of tokens below this are cold.")
    ] = 0.01,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the result as JSON here; makes the job resumable.")
    ] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page (layers x experts).")] = None,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tokens per expert over a corpus, per MoE layer: shares, load entropy, cold experts, balancing loss.

    The corpus is cut into shards of consecutive prompts; with --backend ray, Ray workers run them. Each
    shard's sums wait in OUT.parts/ beside --out until all are there, so a rerun after a kill runs only the
    missing shards; without --out they wait in a temporary folder (on a Ray cluster of several machines,
    give --out on a shared filesystem). The result is the same, to the last bit, on either backend.

    Example: mechscope moe utilization --prompts corpus.txt --json
    Example: mechscope moe utilization --prompts corpus.txt --out usage.json --backend ray --address auto
    """
    from mechscope.cli.inputs import at_least, read_corpus
    from mechscope.moe.utilization import utilization as count_experts

    check_outputs(out, html)
    at_least(batch_size, 1, "--batch-size")
    if shard_size is not None:
        at_least(shard_size, 1, "--shard-size")
    corpus = read_corpus(prompts, prompt)
    with model.runner(backend, address=address, workers=workers) as runner:
        result = count_experts(
            None, corpus, batch_size=batch_size, shard_size=shard_size, cold_threshold=cold_threshold,
            out=out, runner=runner, progress=not as_json,
        )  # fmt: skip
    if html is not None:
        from mechscope.viz.moe_report import render_utilization_html

        write_text_output(html, render_utilization_html(result))
    if as_json:
        print_json(result)
        return
    _print_utilization(result)
    for written in (out, html):
        if written is not None:
            print_line(f"wrote {written}")


def _print_utilization(result: Utilization) -> None:
    """Layers x experts shares, with each layer's load entropy, balancing loss and cold experts."""
    columns: list[str | Column] = [Column("layer", justify="right")]
    columns += [Column(f"E{e}", justify="right") for e in range(result.n_experts)]
    columns += [Column("H / log N", justify="right"), Column("balance loss", justify="right"), "cold"]
    rows = [
        [
            str(u.layer),
            *(f"{s:.3f}" for s in u.share),
            f"{u.load_entropy_normalised:.3f}",
            f"{u.load_balancing_loss:.3f}",
            ",".join(map(str, u.cold)) or "-",
        ]
        for u in result.layers
    ]
    balanced = result.top_k / result.n_experts
    title = f"share of tokens per expert ({result.tokens} tokens, {result.prompts} prompts; balanced = {balanced:.3f})"
    print_table(title, columns, rows)
    console.print(
        f"load-balancing loss (transformers' definition, all MoE layers): {result.load_balancing_loss:.4f} "
        f"(balanced ≈ {result.top_k}); cold = share below {result.cold_threshold:g}"
    )


def _layer_list(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) or "none"
