"""``mechscope``: inspect and change Hugging Face language models from the shell.

Every command prints a table (or ``--json``). Errors caused by input print one line and exit with
status 2; a check that fails exits with status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mechscope.cli.options import (
    AttnOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    RemoteCodeOpt,
    RevisionOpt,
    one_line_errors,
)
from mechscope.cli.weights import weights_app

app = typer.Typer(
    name="mechscope",
    help="Look inside any Hugging Face language model and change it.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(weights_app, name="weights")
console = Console()


@app.command()
@one_line_errors
def models(as_json: JsonOpt = False) -> None:
    """List supported model families and bundled organisms.

    Example: mechscope models --json
    """
    from mechscope.models.archmap import FAMILIES
    from mechscope.models.registry import list_organisms

    families = [{"model_type": name, "kind": spec.kind, "note": spec.note} for name, spec in FAMILIES.items()]
    organisms = [{"name": o.name, "path": str(o.path), "summary": o.summary} for o in list_organisms()]
    if as_json:
        print(json.dumps({"families": families, "organisms": organisms}, indent=2))
        return
    table = Table(title="Supported families")
    for column in ("model_type", "kind", "note"):
        table.add_column(column)
    for row in families:
        table.add_row(row["model_type"], row["kind"], row["note"])
    console.print(table)
    listing = Table(title="Bundled organisms (load by name)")
    listing.add_column("name")
    listing.add_column("summary")
    for org in organisms:
        listing.add_row(org["name"], org["summary"])
    if not organisms:
        listing.add_row("(none installed)", "")
    console.print(listing)


@app.command()
@one_line_errors
def doctor(
    model: ModelOpt,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    revision: RevisionOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    attn: AttnOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that every hook fires and captures match transformers exactly on MODEL.

    Exits 1 if any check fails. Run it before trusting mechscope on a new architecture.

    Example: mechscope doctor -m ./my-model --json
    """
    import mechscope as ms
    from mechscope.checks.doctor import run_doctor

    lm = ms.load(
        model,
        dtype=dtype,
        device=device,
        device_map=device_map,
        revision=revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn,
    )
    report = run_doctor(lm)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        table = Table(title=f"mechscope doctor: {report.model} ({report.family})")
        for column in ("check", "result", "detail"):
            table.add_column(column)
        for check in report.checks:
            mark = "[green]pass[/green]" if check.passed else "[red]FAIL[/red]"
            table.add_row(check.name, mark, check.detail)
        console.print(table)
    if not report.passed:
        raise typer.Exit(1)


def visible(token: str) -> str:
    """A token with its whitespace made visible (tokens are user data: rich markup is escaped)."""
    from rich.markup import escape

    return escape(token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥"))


@app.command()
@one_line_errors
def analyze(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to analyse.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    top_k: Annotated[int, typer.Option("--top-k", help="Tokens shown per layer.")] = 3,
    track: Annotated[list[str] | None, typer.Option("--track", help="Token to follow through the layers.")] = None,
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    lens_kind: Annotated[str, typer.Option("--lens", help="logit, or tuned (needs a trained tuned lens).")] = "logit",
    tuned_path: Annotated[
        Path | None, typer.Option("--tuned", help="Tuned-lens file (default: tuned_lens.safetensors by the model).")
    ] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Logit lens: what the model predicts after every layer, at the prompt's last token.

    Example: mechscope analyze -p "The capital of France is" --track " Paris"
    """
    import mechscope as ms
    from mechscope.lens.logit import LogitLens
    from mechscope.lens.strategy import parse_layers
    from mechscope.lens.tuned import TunedLens

    lm = ms.load(model, dtype=dtype, device=device)
    if lens_kind not in ("logit", "tuned"):
        raise ms.InputError(f"unknown --lens '{lens_kind}'; use logit or tuned")
    tuned = TunedLens.load(tuned_path or default_tuned_path(lm), lm) if lens_kind == "tuned" else None
    lens = LogitLens(lm, tuned)
    chosen = parse_layers(layers, lm.arch.n_layers)
    result = lens.run([prompt], layers=chosen, top_k=top_k, track=track or [])[0]
    if html is not None:
        from mechscope.viz.lens_report import render_lens_html

        page = render_lens_html(result, lens.grid(prompt, layers=chosen), model=lm.source, lens=lens_kind)
        write_atomically(html, page)
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    table = Table(title=f"logit lens: {lm.source} ({lm.arch.family}), position {result.position}")
    table.add_column("layer", justify="right")
    table.add_column("top-1")
    table.add_column("p", justify="right")
    table.add_column(f"next {top_k - 1}")
    for evolution in result.token_evolutions:
        table.add_column(f"rank {visible(evolution.token)}", justify="right")
    for i, prediction in enumerate(result.layer_predictions):
        others = "  ".join(f"{visible(t.token)} {t.prob:.2f}" for t in prediction.top[1:])
        ranks = [str(e.ranks[i]) for e in result.token_evolutions]
        table.add_row(
            str(prediction.layer), visible(prediction.top_token), f"{prediction.top[0].prob:.3f}", others, *ranks
        )
    console.print(table)
    emergence = "never" if result.emergence_layer is None else f"layer {result.emergence_layer}"
    console.print(
        f"prediction: {visible(result.predicted_token)} (p={result.predicted.prob:.3f}); top-1 from {emergence}"
    )


@app.command()
@one_line_errors
def compare(
    model1: Annotated[str, typer.Option("--model1", help="First model (e.g. the base).")],
    model2: Annotated[str, typer.Option("--model2", help="Second model (e.g. the fine-tuned one).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text both models read.")],
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two models' layer-by-layer predictions on the same prompt and say where they diverge.

    Example: mechscope compare --model1 toy --model2 ./toy-finetuned -p "The capital of France is"
    """
    import mechscope as ms
    from mechscope.lens.compare import compare as compare_models

    result = compare_models(ms.load(model1), ms.load(model2), prompt)
    if html is not None:
        from mechscope.viz.compare_report import render_compare_html

        write_atomically(html, render_compare_html(result))
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    table = Table(title=f"{result.model_a} vs {result.model_b}")
    for column in ("layer 1", "top-1 (model 1)", "layer 2", "top-1 (model 2)", "same", "KL(1||2)"):
        table.add_column(column)
    for row in result.layers:
        kl = "" if row.kl_a_to_b is None else f"{row.kl_a_to_b:.3f}"
        same = "yes" if row.same_top else "[red]no[/red]"
        table.add_row(str(row.layer_a), visible(row.top_a.token), str(row.layer_b), visible(row.top_b.token), same, kl)
    console.print(table)
    if not result.token_level:
        console.print(f"not compared token by token: {result.reason}")
    else:
        where = "nowhere" if result.first_divergence is None else f"first at layer {result.first_divergence}"
        console.print(f"predictions {visible(result.predicted_a)} vs {visible(result.predicted_b)}; diverge {where}")


@app.command()
@one_line_errors
def attention(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to analyse.")],
    layer: Annotated[int, typer.Option("--layer", help="Layer to show (negative counts from the end).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    head: Annotated[int | None, typer.Option("--head", help="One head (default: the mean over heads).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Focus: weights above this are listed.")] = 0.3,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a layer's heads look: focus edges, entropy and sink mass per head, and an optional heatmap.

    Example: mechscope attention -p "The capital of France is" --layer 1 --html att.html
    """
    import mechscope as ms
    from mechscope.attention.patterns import entropy, focus, patterns, sink_mass

    lm = ms.load(model)
    chosen = patterns(lm, [prompt])
    layer = layer % lm.arch.n_layers if -lm.arch.n_layers <= layer < lm.arch.n_layers else layer
    edges = focus(lm, prompt, layer, threshold=threshold, head=head)
    per_head_entropy = [[float(x) for x in entropy(chosen[i][0]).mean(-1)] for i in sorted(chosen)]
    per_head_sink = [[float(x) for x in sink_mass(chosen[i])[0]] for i in sorted(chosen)]
    if html is not None:
        from mechscope.viz.attention_report import render_attention_html

        pattern = chosen[layer][0]
        weights = pattern[head] if head is not None else pattern.mean(0)
        ids = lm.tokenize([prompt])["input_ids"][0].tolist()
        page = render_attention_html(
            title=f"mechscope attention: {lm.source}",
            prompt=prompt,
            tokens=[str(lm.tokenizer.decode([i])) for i in ids],
            weights=weights.tolist(),
            caption=f"layer {layer}, " + (f"head {head}" if head is not None else "mean over heads"),
            overviews={
                "entropy (nats)": per_head_entropy,
                "sink mass": per_head_sink,
                **{f"{name} score": scores for name, scores in role_tables(lm).items()},
            },
        )
        write_atomically(html, page)
    if as_json:
        data = {"layer": layer, "focus": [e.model_dump() for e in edges], "entropy": per_head_entropy[layer]}
        print(json.dumps({**data, "sink_mass": per_head_sink[layer]}, indent=2))
        return
    table = Table(title=f"layer {layer}: attention weights above {threshold}")
    for column in ("head", "query", "key", "weight"):
        table.add_column(column)
    for edge in edges:
        query = f"{edge.query} {visible(edge.query_token)}"
        table.add_row(str(edge.head), query, f"{edge.key} {visible(edge.key_token)}", f"{edge.weight:.3f}")
    console.print(table)
    summary = "  ".join(
        f"H{h}: entropy {e:.2f}, sink {s:.2f}"
        for h, (e, s) in enumerate(zip(per_head_entropy[layer], per_head_sink[layer], strict=True))
    )
    console.print(summary)


@app.command()
@one_line_errors
def heads(
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    top: Annotated[int, typer.Option("--top", help="Heads listed per role.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Score every head for previous-token, duplicate-token, induction and copying roles; list the best.

    Example: mechscope heads -m toy --top 3
    """
    import mechscope as ms
    from mechscope.attention.roles import ROLES, head_roles

    roles = head_roles(ms.load(model))
    if as_json:
        print(roles.model_dump_json(indent=2))
        return
    table = Table(title="top heads per role (score in [0, 1])")
    for column in ("role", "layer.head: score"):
        table.add_column(column)
    for role in ROLES:
        best = roles.top(role, top)
        table.add_row(role, "  ".join(f"{layer}.{h}: {score:.2f}" for layer, h, score in best) or "n/a")
    console.print(table)


@app.command()
@one_line_errors
def patch(
    clean: Annotated[str, typer.Option("--clean", help="Prompt whose behaviour is restored.")],
    corrupted: Annotated[str, typer.Option("--corrupted", help="Prompt of the same token length.")],
    correct: Annotated[str, typer.Option("--correct", help="Answer token of the clean prompt.")],
    wrong: Annotated[str, typer.Option("--wrong", help="Answer token of the corrupted prompt.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    site: Annotated[str, typer.Option("--site", help="resid_pre, resid_post, attn_out or mlp_out.")] = "resid_post",
    attribution: Annotated[
        bool, typer.Option("--attribution", help="Also run attribution patching and report its correlation.")
    ] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML heatmap.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Activation patching: restore the clean run one (layer, position) at a time; logit-difference metric.

    Example: mechscope patch --clean "The capital of France is" --corrupted "The capital of Japan is"
    --correct " Paris" --wrong " Tokyo"
    """
    import mechscope as ms
    from mechscope.causal.patching import LogitDiff, activation_patching

    lm = ms.load(model)
    metric = LogitDiff(lm, correct=correct, wrong=wrong)
    result = activation_patching(lm, clean, corrupted, metric, site=site, progress=not as_json)
    r = None
    if attribution:
        from mechscope.causal.patching import attribution_patching, correlation

        estimate = attribution_patching(lm, clean, corrupted, metric, site=site)
        r = correlation(result.effects, estimate.effects)
    if html is not None:
        from mechscope.viz.patching_report import render_patching_html

        write_atomically(html, render_patching_html(result, model=lm.source))
    if as_json:
        data = json.loads(result.model_dump_json())
        if r is not None:
            data["attribution"] = {"effects": estimate.effects, "correlation": r}
        print(json.dumps(data, indent=2))
        return
    title = f"{site} patching (0 = corrupted, 1 = clean)" + (" (PARTIAL: interrupted)" if result.partial else "")
    table = Table(title=title)
    table.add_column("layer")
    for token in result.tokens:
        table.add_column(visible(token), justify="right")
    for layer, row in zip(result.layers, result.effects, strict=True):
        table.add_row(str(layer), *(f"{effect:.2f}" for effect in row))
    console.print(table)
    if r is not None:
        console.print(f"attribution patching vs activation patching: r = {r:.3f}")


@app.command()
@one_line_errors
def ablate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt to run with components removed.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    component: Annotated[str, typer.Option("--component", help="attn, mlp, resid, head or expert.")] = "mlp",
    method: Annotated[str, typer.Option("--method", help="zero, mean or resample.")] = "zero",
    target: Annotated[
        str | None, typer.Option("--target", help="Logit metric: probability of this token at the end.")
    ] = None,
    criterion: Annotated[
        str | None,
        typer.Option("--criterion", help="Text metric on generation: contains:<text>, regex:<re> or function_call."),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Prompts (one per line) whose mean --method mean uses.")
    ] = None,
    resample_from: Annotated[str | None, typer.Option("--resample-from", help="Prompt for --method resample.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated per run.")] = 20,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result JSON (partial on Ctrl-C).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML table.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ablation sweep: knock out each layer's (or head's, or expert's) component and measure the effect.

    Example: mechscope ablate -p "<user> What's the weather in Paris?<assistant>" --component attn
    --criterion function_call
    """
    import mechscope as ms
    from mechscope.causal.ablation import TargetProb, parse_criterion, sweep

    lm = ms.load(model)
    lines = reference.read_text(encoding="utf-8").splitlines() if reference is not None else None
    result = sweep(
        lm,
        prompt,
        component=component,
        method=method,
        metric=TargetProb(lm, target) if target is not None else None,
        criterion=parse_criterion(criterion) if criterion is not None else None,
        reference=[line for line in lines or [] if line.strip()] or None,
        resample_from=resample_from,
        max_new_tokens=max_new_tokens,
        progress=not as_json,
    )
    if out is not None:
        write_atomically(out, result.model_dump_json(indent=2))
    if html is not None:
        from mechscope.viz.ablation_report import render_ablation_html

        write_atomically(html, render_ablation_html(result, model=lm.source))
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    table = Table(title=f"{method} ablation of {component}" + (" (PARTIAL: interrupted)" if result.partial else ""))
    for column in ("layer", "index", "metric" if target else "criterion", "change" if target else "text"):
        table.add_column(column)
    for effect in result.effects:
        index = "" if effect.index is None else str(effect.index)
        if target is not None:
            table.add_row(str(effect.layer), index, f"{effect.metric:.4f}", f"{effect.delta:+.4f}")
        else:
            table.add_row(str(effect.layer), index, str(effect.criterion), visible(effect.text or ""))
    console.print(table)
    clean = f"p={result.clean_metric:.4f}" if target is not None else f"criterion {result.clean_criterion}"
    console.print(f"clean run: {clean}")


circuit_app = typer.Typer(help="Circuit graphs from ablation or patching results.", no_args_is_help=True)
app.add_typer(circuit_app, name="circuit")


@circuit_app.command("export")
@one_line_errors
def circuit_export(
    source: Annotated[Path, typer.Option("--input", "-i", help="Result JSON from ablate --out or patch --json.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the graph.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="json, dot, mermaid or html.")] = "json",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Keep components with |effect| at least this.")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", help="Keep at most this many components.")] = None,
) -> None:
    """Build a circuit graph (components with their effect sizes) and export it.

    Example: mechscope circuit export -i ablation.json -o circuit.html -f html
    """
    from mechscope.causal.circuit import build, load_results, to_dot, to_mermaid
    from mechscope.errors import InputError

    if not source.is_file():
        raise InputError(f"no result file at '{source}'; write one with mechscope ablate --out or patch --json")
    try:
        graph = build(load_results(source.read_text(encoding="utf-8")), threshold=threshold, top=top)
    except ValueError as error:
        raise InputError(f"'{source}' is not an ablation or patching result: {str(error).splitlines()[0]}") from None
    if fmt == "json":
        text = graph.model_dump_json(indent=2)
    elif fmt == "dot":
        text = to_dot(graph)
    elif fmt == "mermaid":
        text = to_mermaid(graph)
    elif fmt == "html":
        from mechscope.viz.circuit_report import render_circuit_html

        text = render_circuit_html(graph)
    else:
        raise InputError(f"unknown format '{fmt}'; use json, dot, mermaid or html")
    write_atomically(out, text)
    console.print(f"{len(graph.nodes) - 2} components, {len(graph.edges)} edges -> {out}")


steer_app = typer.Typer(help="Steer generation with direction vectors.", invoke_without_command=True)
app.add_typer(steer_app, name="steer")
directions_app = typer.Typer(help="Compute and inspect direction vectors.", no_args_is_help=True)
app.add_typer(directions_app, name="directions")

DirectionOpt = Annotated[Path, typer.Option("--direction", "-d", help="A direction file (.safetensors).")]


def _load_direction(path: Path, lm: Any, layer: int | None) -> Any:
    from mechscope import errors as ms_errors
    from mechscope.steering.directions import Direction

    direction = Direction.load(path, lm)
    if layer is not None:
        n = lm.arch.n_layers
        if not -n <= layer < n:
            raise ms_errors.SiteError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")
        direction.layer = layer % n
    return direction


@steer_app.callback()
@one_line_errors
def steer(
    ctx: typer.Context,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt(s) to continue.")] = None,
    direction: Annotated[Path | None, typer.Option("--direction", "-d", help="Direction file.")] = None,
    coefficient: Annotated[float, typer.Option("--coefficient", "-c", help="Scale of the added vector.")] = 1.0,
    layer: Annotated[int | None, typer.Option("--layer", help="Add at this layer (default: the file's).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    normalize: Annotated[bool, typer.Option("--normalize", help="Use the unit vector times the coefficient.")] = False,
    positions: Annotated[str, typer.Option("--positions", help="all, prompt or generated.")] = "all",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 32,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for sampling.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate with a direction added (plain output first, then steered).

    Example: mechscope steer -p "<formal> Tell me about the sea." -d pirate.safetensors -c 4
    """
    if ctx.invoked_subcommand is not None:
        return
    if not prompt or direction is None:
        raise typer.BadParameter("give --prompt and --direction (or use: mechscope steer sweep ...)")
    import mechscope as ms
    from mechscope.steering.generate import generate_with_steering

    lm = ms.load(model)
    vector = _load_direction(direction, lm, layer)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    plain = lm.generate(list(prompt), **options)
    if positions not in ("all", "prompt", "generated"):
        raise ms.InputError(f"unknown --positions '{positions}'; use all, prompt or generated")
    phase: Any = positions
    steered = generate_with_steering(
        lm, list(prompt), vector, coefficient, normalize=normalize, positions=phase, seed=seed, **options
    )
    if as_json:
        rows = zip(prompt, plain, steered, strict=True)
        print(json.dumps([{"prompt": p, "plain": a, "steered": b} for p, a, b in rows]))
        return
    for text, before, after in zip(prompt, plain, steered, strict=True):
        console.print(f"[bold]{visible(text)}[/bold]\n  plain:   {visible(before)}\n  steered: {visible(after)}")


@steer_app.command("sweep")
@one_line_errors
def steer_sweep(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt(s) to continue.")],
    direction: DirectionOpt,
    coefficients: Annotated[str, typer.Option("--coefficients", help="Comma-separated scales.")] = "-8,-4,0,4,8",
    layer: Annotated[int | None, typer.Option("--layer", help="Add at this layer (default: the file's).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 32,
    as_json: JsonOpt = False,
) -> None:
    """Generate at several coefficients with one loaded model; a table of outputs.

    Example: mechscope steer sweep -p "<formal> Tell me about the sea." -d pirate.safetensors --coefficients 0,1,2
    """
    import mechscope as ms
    from mechscope.errors import InputError
    from mechscope.steering.generate import sweep

    try:
        scales = [float(c) for c in coefficients.split(",") if c.strip()]
    except ValueError:
        raise InputError(f"bad --coefficients '{coefficients}'; write numbers separated by commas") from None
    lm = ms.load(model)
    table_data = sweep(lm, list(prompt), _load_direction(direction, lm, layer), scales, max_new_tokens=max_new_tokens)
    if as_json:
        print(table_data.model_dump_json(indent=2))
        return
    table = Table(title=f"steering sweep at {table_data.site}")
    table.add_column("coefficient", justify="right")
    for text in table_data.prompts:
        table.add_column(visible(text))
    for row in table_data.rows:
        table.add_row(f"{row.coefficient:g}", *(visible(t) for t in row.texts))
    console.print(table)


@directions_app.command("compute")
@one_line_errors
def directions_compute(
    positive: Annotated[Path, typer.Option("--positive", help="Prompts with the trait, one per line.")],
    negative: Annotated[Path, typer.Option("--negative", help="Prompts without it, one per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for one direction file per layer.")],
    layers: Annotated[str, typer.Option("--layers", help="all, every:N, first,middle,last or 0,3,-1.")] = "all",
    method: Annotated[
        str, typer.Option("--method", help="diff_of_means or pca (pairs line by line).")
    ] = "diff_of_means",
    model: Annotated[str, typer.Option("--model", "-m", help="Model (default: the bundled organism toy).")] = "toy",
) -> None:
    """Compute contrast directions per layer and save them as safetensors + JSON.

    Example: mechscope directions compute --positive pirate.txt --negative formal.txt --layers 1 -o dirs/
    """
    import mechscope as ms
    from mechscope.errors import InputError
    from mechscope.lens.strategy import parse_layers
    from mechscope.steering.directions import diff_of_means, pca_of_differences

    def lines(path: Path) -> list[str]:
        if not path.is_file():
            raise InputError(f"no prompt file at '{path}'")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    lm = ms.load(model)
    chosen = parse_layers(layers, lm.arch.n_layers)
    pos, neg = lines(positive), lines(negative)
    if method == "diff_of_means":
        found = diff_of_means(lm, pos, neg, layers=chosen)
    elif method == "pca":
        if len(pos) != len(neg):
            raise InputError("pca pairs the files line by line; give them the same number of lines")
        found = pca_of_differences(lm, list(zip(pos, neg, strict=True)), layers=chosen)
    else:
        raise InputError(f"unknown --method '{method}'; use diff_of_means or pca")
    out.mkdir(parents=True, exist_ok=True)
    for layer, direction in found.items():
        path = direction.save(out / f"{direction.site}.{layer}.safetensors")
        console.print(f"layer {layer}: norm {float(direction.vector.norm()):.3f} -> {path}")


def role_tables(lm: Any) -> dict[str, list[list[float]]]:
    """The head-role scores of ``lm`` as layers x heads tables (copying left out when there is none)."""
    from mechscope.attention.roles import ROLES, head_roles

    roles = head_roles(lm)
    return {role: getattr(roles, role) for role in ROLES if getattr(roles, role) is not None}


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a failure never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def default_tuned_path(lm: Any) -> Path:
    """Where a model's tuned lens lives by default: next to its weights."""
    return Path(lm.source) / "tuned_lens.safetensors"


@app.command("tuned-lens")
@one_line_errors
def tuned_lens(
    model: ModelOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to save (default: by the model).")] = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="Training text, one document per line (default: organism corpus).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Train a tuned lens on text and report each layer's KL to the final layer, logit vs tuned lens.

    A tenth of the documents is held out for the report. Without --text, the organisms' own corpus is used.

    Example: mechscope tuned-lens -m toy
    """
    import random

    import mechscope as ms
    from mechscope.lens.tuned import TunedLens, layer_kl

    lm = ms.load(model)
    if text is not None:
        documents = [line.strip() for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from mechscope.zoo.corpus import text_documents

        documents = [d.text for d in text_documents(4242, 2000)]
    random.Random(0).shuffle(documents)
    held_out, train = documents[: len(documents) // 10], documents[len(documents) // 10 :]
    lens = TunedLens.fit(lm, train, steps=steps)
    path = lens.save(out or default_tuned_path(lm), model=lm.source)
    logit, tuned = layer_kl(lm, held_out), layer_kl(lm, held_out, lens)
    rows = [{"layer": i, "kl_logit": a, "kl_tuned": b} for i, (a, b) in enumerate(zip(logit, tuned, strict=True))]
    if as_json:
        print(json.dumps({"path": str(path), "layers": rows}, indent=2))
        return
    table = Table(title=f"KL to the final layer on {len(held_out)} held-out documents")
    for column in ("layer", "logit lens", "tuned lens"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["layer"]), f"{row['kl_logit']:.3f}", f"{row['kl_tuned']:.3f}")
    console.print(table)
    console.print(f"saved {path}")


def main() -> None:
    """Entry point for ``python -m mechscope``."""
    app()
