"""``mechscope moe ablate|route|compare``: change the routing and measure it; compare two models' routing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.moe.basics import DEFAULT_MODEL
from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, print_json, print_line, print_table, visible, write_text_output
from mechscope.errors import InputError

if TYPE_CHECKING:
    from mechscope.moe.intervention_results import RouteResult, RoutingComparison

_PAIR = re.compile(r"^-?\d+:\d+$")
TargetOpt = Annotated[str | None, typer.Option("--target", help="Score: probability of this token at the end.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated per run.")]


def pairs(values: list[str] | None, option: str) -> list[tuple[int, int]]:
    """``LAYER:EXPERT`` items of a repeatable, comma-separated option (``--force 2:1,3:0``)."""
    found = []
    for value in values or []:
        for item in value.split(","):
            if not _PAIR.match(item.strip()):
                raise InputError(f"bad {option} '{item}'; write LAYER:EXPERT, e.g. {option} 2:1 (several: 2:1,3:0)")
            layer, expert = item.strip().split(":")
            found.append((int(layer), int(expert)))
    return found


def expert_list(text: str) -> list[int] | None:
    """``--experts``: ``all`` (None) or expert numbers separated by commas."""
    if text.strip() == "all":
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise InputError(f"bad --experts '{text}'; write all or expert numbers separated by commas, e.g. 1,3")
    return [int(part) for part in parts]


def register(app: typer.Typer) -> None:
    """Adds ``ablate``, ``route`` and ``compare`` to ``app``."""
    app.command("ablate")(one_line_errors(model_options(default=DEFAULT_MODEL)(ablate)))
    app.command("route")(one_line_errors(model_options(default=DEFAULT_MODEL)(route)))
    two_models = model_options(prefix="model2", default=None)(compare)
    app.command("compare")(one_line_errors(model_options(prefix="model1", default=None)(two_models)))


def ablate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt to run with experts removed.")],
    model: ModelOptions,
    layer: Annotated[int | None, typer.Option("--layer", help="One MoE layer (default: every MoE layer).")] = None,
    experts: Annotated[str, typer.Option("--experts", help="Experts to ablate: all, or e.g. 1,3.")] = "all",
    renormalise: Annotated[
        bool, typer.Option("--renormalise", help="Scale the other chosen experts' weights back to their sum.")
    ] = False,
    target: TargetOpt = None,
    criterion: Annotated[
        str | None, typer.Option("--criterion", help="Text metric: contains:<text>, regex:<re> or function_call.")
    ] = None,
    max_new_tokens: MaxTokensOpt = 20,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result JSON.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the sweep as an HTML heatmap.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero each expert of a layer in turn (one batched pass per layer) and measure the effect.

    Example: mechscope moe ablate -p "The capital of France is" --layer 1 --target " Paris"
    """
    from mechscope.api import tasks
    from mechscope.cli.causal import emit_ablation
    from mechscope.moe.info import moe_layers
    from mechscope.moe.interventions import expert_ablation

    check_outputs(out, html)
    if (target is None) == (criterion is None):
        raise InputError("give one of --target TOKEN (scored) or --criterion contains:<text>|regex:<re>|function_call")
    indices = expert_list(experts)
    lm = model.load()
    result = tasks.ablate(
        lm,
        prompt,
        component="expert",
        target=target,
        criterion=criterion,
        layers=moe_layers(lm, None if layer is None else [layer]),
        indices=indices,
        ablator=expert_ablation(renormalise=renormalise),
        max_new_tokens=max_new_tokens,
        progress=not as_json,
    )
    emit_ablation(result, lm.source, out=out, html=html, as_json=as_json)


def route(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt to run with the routing overridden.")],
    model: ModelOptions,
    force: Annotated[
        list[str] | None, typer.Option("--force", help="LAYER:EXPERT: route every token there (repeatable).")
    ] = None,
    forbid: Annotated[
        list[str] | None, typer.Option("--forbid", help="LAYER:EXPERT: never route there (repeatable).")
    ] = None,
    target: TargetOpt = None,
    max_new_tokens: MaxTokensOpt = 20,
    as_json: JsonOpt = False,
) -> None:
    """Generate (or score --target) with experts forced or forbidden per layer, next to the clean run.

    Example: mechscope moe route -p "The capital of France is" --force 1:2 --forbid 3:0 --target " Paris"
    """
    from mechscope.moe.route import reroute

    forced: dict[int, int] = {}
    for layer, expert in pairs(force, "--force"):
        if forced.setdefault(layer, expert) != expert:
            raise InputError(f"--force names layer {layer} twice ({forced[layer]} and {expert}); force one expert")
    forbidden: dict[int, list[int]] = {}
    for layer, expert in pairs(forbid, "--forbid"):
        forbidden.setdefault(layer, []).append(expert)
    if not forced and not forbidden:
        raise InputError("give --force LAYER:EXPERT or --forbid LAYER:EXPERT, e.g. --force 1:2")
    lm = model.load()
    result = reroute(lm, prompt, force=forced, forbid=forbidden, target=target, max_new_tokens=max_new_tokens)
    if as_json:
        print_json(result)
        return
    _print_route(result)


def _print_route(result: RouteResult) -> None:
    def edits(layer: int) -> str:
        parts = [f"force {result.force[layer]}"] if layer in result.force else []
        if layer in result.forbid:
            parts.append("forbid " + ",".join(map(str, result.forbid[layer])))
        return "; ".join(parts)

    n_experts = len(next(iter(result.routed_share.values())))
    columns: list[str | Column] = [
        Column("layer", justify="right"),
        "override",
        *(Column(f"E{e}", justify="right") for e in range(n_experts)),
    ]
    rows = [[str(layer), edits(layer), *(f"{s:.2f}" for s in share)] for layer, share in result.routed_share.items()]
    print_table("share of the prompt's tokens routed to each expert, with the override", columns, rows)
    if result.target is not None:
        print_line(f"p({visible(result.target)}): clean {result.clean_prob:.4f}, overridden {result.prob:.4f}")
    else:
        print_line(f"clean:      {visible(result.clean_text or '')}")
        print_line(f"overridden: {visible(result.text or '')}")


def compare(
    model1: ModelOptions,
    model2: ModelOptions,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Corpus file: one prompt per line.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeat for more).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")] = 32,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Routing of two checkpoints of one architecture on one corpus: agreement and KL per MoE layer.

    Example: mechscope moe compare --model1 toy-moe --model2 ./toy-moe-tuned --prompts corpus.txt
    """
    from mechscope.cli.inputs import at_least, read_corpus
    from mechscope.moe.compare import compare as compare_routing

    check_outputs(out)
    at_least(batch_size, 1, "--batch-size")
    corpus = read_corpus(prompts, prompt)
    result = compare_routing(model1.load(), model2.load(), corpus, batch_size=batch_size, progress=not as_json)
    if out is not None:
        write_text_output(out, result.model_dump_json(indent=2))
    if as_json:
        print_json(result)
        return
    _print_comparison(result)


def _print_comparison(result: RoutingComparison) -> None:
    columns = [Column(name, justify="right") for name in ("layer", "top-1 agreement", "top-k Jaccard", "KL(1‖2) nats")]
    rows = [[str(c.layer), f"{c.top1_agreement:.3f}", f"{c.jaccard:.3f}", f"{c.kl:.4f}"] for c in result.layers]
    print_table(f"routing: {result.model_a} vs {result.model_b} ({result.tokens} tokens)", columns, rows)
