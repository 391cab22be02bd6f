"""``mechscope sae evaluate|features|top-examples``: how good an SAE is, and what its features respond to.

``evaluate`` streams a corpus (``--prompts FILE``, else the organisms' own corpus) and reports
reconstruction (MSE, explained variance), sparsity (L0, dead and dense features) and the loss of running
the model through the SAE next to zero ablation (`mechscope.sae.evaluate`). ``features`` lists each token's
top features on one prompt and, with ``--feature``, that feature's activation at every token and its logit
effect. ``top-examples`` finds the contexts of a corpus where features are most active.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_table, visible, write_text_output
from mechscope.cli.sae import ForceOpt, SaeOpt

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel
    from mechscope.sae import SAE
    from mechscope.sae.results import Evaluation, LogitEffect

HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")]
CorpusOpt = Annotated[Path | None, typer.Option("--prompts", help="Corpus file, one prompt per line.")]
DocumentsOpt = Annotated[
    int, typer.Option("--documents", help="Without --prompts: documents of the organisms' corpus to use.")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")]


def register(app: typer.Typer) -> None:
    """Adds ``evaluate``, ``features`` and ``top-examples`` to the ``sae`` sub-app."""
    app.command("evaluate")(sae_evaluate)
    app.command("features")(sae_features)
    app.command("top-examples")(sae_top_examples)


def _load(model: ModelOptions, path: Path, force: bool) -> tuple[LanguageModel, SAE]:
    import mechscope.sae

    lm = model.load()
    return lm, mechscope.sae.load(path, lm, force=force)


def _corpus(path: Path | None, documents: int) -> list[str]:
    """The lines of ``--prompts``, else ``documents`` documents of the organisms' corpus (seed 0)."""
    from mechscope.cli.inputs import at_least, read_corpus

    if path is not None:
        return read_corpus(path, None)
    from mechscope.zoo.corpus import text_documents

    return [d.text for d in text_documents(0, at_least(documents, 1, "--documents"))]


@one_line_errors
@model_options
def sae_evaluate(
    sae_path: SaeOpt,
    model: ModelOptions,
    prompts: CorpusOpt = None,
    documents: DocumentsOpt = 256,
    batch_size: BatchOpt = 32,
    keep_first: Annotated[
        bool, typer.Option("--keep-first", help="Evaluate each prompt's first token (BOS) too.")
    ] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Reconstruction, sparsity and loss of splicing the SAE in, on a corpus (each prompt's BOS left out).

    Example: mechscope sae evaluate -m toy --sae saes/resid_post.2 --prompts corpus.txt
    """
    from mechscope.cli.inputs import at_least
    from mechscope.sae.evaluate import evaluate

    at_least(batch_size, 1, "--batch-size")
    corpus = _corpus(prompts, documents)
    lm, sae = _load(model, sae_path, force)
    result = evaluate(lm, sae, corpus, batch_size=batch_size, skip_first=not keep_first, progress=not as_json)
    if as_json:
        print_json(result)
        return
    _print_evaluation(result)


def _print_evaluation(result: Evaluation) -> None:
    recovered = "n/a" if result.loss_recovered is None else f"{result.loss_recovered:.4f}"
    rows = [
        ["tokens evaluated", f"{result.tokens} of {result.prompts} prompts"],
        ["MSE (per token, summed over d)", f"{result.mse:.6g}"],
        ["normalised MSE (Σ‖x−x̂‖² / Σ‖x‖²)", f"{result.normalized_mse:.4f}"],
        ["explained variance", f"{result.explained_variance:.4f}"],
        ["L0 (active features per token)", f"{result.l0:.2f}"],
        ["dead features", f"{result.dead} of {result.d_sae} ({result.dead_fraction:.1%})"],
        [f"dense features (> {result.dense_threshold:.0%} of tokens)", str(len(result.dense))],
        ["CE clean / SAE / zero-ablated", f"{result.ce_clean:.4f} / {result.ce_sae:.4f} / {result.ce_zero:.4f}"],
        ["delta loss (SAE − clean)", f"{result.delta_loss:+.4f}"],
        ["loss recovered", recovered],
    ]
    print_table(f"SAE at {result.site}", ["metric", Column("value", justify="right")], rows)


def _print_logits(effect: LogitEffect) -> None:
    rows = [
        [visible(up.token), f"{up.effect:+.4f}", visible(down.token), f"{down.effect:+.4f}"]
        for up, down in zip(effect.positive, effect.negative, strict=True)
    ]
    columns: list[str | Column] = ["promoted", Column("effect", justify="right")]
    columns += ["suppressed", Column("effect", justify="right")]
    print_table(f"logit effect of feature {effect.feature} (W_U @ W_dec, no final norm)", columns, rows)


@one_line_errors
@model_options
def sae_features(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt to read.")],
    sae_path: SaeOpt,
    model: ModelOptions,
    top: Annotated[int, typer.Option("--top", help="Features listed per token.")] = 10,
    feature: Annotated[
        int | None, typer.Option("--feature", "-f", help="Also show this feature at every token, and its logits.")
    ] = None,
    html: HtmlOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Each token's most active SAE features on a prompt; with --feature, that feature at every token.

    Example: mechscope sae features -m toy --sae saes/resid_post.2 -p "The capital of France is" --feature 123
    """
    from mechscope.sae.read import logit_effect, top_features

    check_outputs(html)
    lm, sae = _load(model, sae_path, force)
    result = top_features(lm, sae, prompt, top=top, features=[] if feature is None else [feature])
    effect = None
    if feature is not None and not sae.site.startswith("head_out"):  # head_out rows are not in the residual
        effect = logit_effect(lm, sae, feature, top=top)
    if html is not None:
        from mechscope.viz.sae_report import render_features_html

        write_text_output(html, render_features_html(result, feature=feature, logits=effect, model=lm.source))
    if as_json:
        payload = {"features": result.model_dump(), "logit_effect": None if effect is None else effect.model_dump()}
        print_json(payload)
        return
    trace = result.traces[0].activations if result.traces else None
    rows = [
        [
            str(t.position),
            visible(t.token),
            *([f"{trace[t.position]:.4f}"] if trace is not None else []),
            "  ".join(f"{f.feature}:{f.activation:.3g}" for f in t.top),
        ]
        for t in result.tokens
    ]
    columns: list[str | Column] = [Column("pos", justify="right"), "token"]
    columns += [Column(f"feature {feature}", justify="right")] if feature is not None else []
    print_table(f"top {top} SAE features per token at {result.site}", [*columns, "features"], rows)
    if effect is not None:
        _print_logits(effect)


@one_line_errors
@model_options
def sae_top_examples(
    sae_path: SaeOpt,
    feature: Annotated[list[int], typer.Option("--feature", "-f", help="Feature(s) to search for (repeatable).")],
    model: ModelOptions,
    prompts: CorpusOpt = None,
    documents: DocumentsOpt = 256,
    k: Annotated[int, typer.Option("--k", help="Contexts kept per feature.")] = 20,
    context: Annotated[int, typer.Option("--context", help="Tokens shown either side of each example.")] = 8,
    batch_size: BatchOpt = 32,
    html: HtmlOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The contexts of a corpus where each feature is most active (each prompt's BOS left out).

    Example: mechscope sae top-examples -m toy --sae saes/resid_post.2 --prompts corpus.txt --feature 123
    """
    from mechscope.cli.inputs import at_least
    from mechscope.sae.read import check_features, logit_effect, top_examples

    at_least(batch_size, 1, "--batch-size")
    check_outputs(html)
    corpus = _corpus(prompts, documents)
    lm, sae = _load(model, sae_path, force)
    chosen = check_features(sae, feature)
    result = top_examples(lm, sae, corpus, chosen, k=k, context=context, batch_size=batch_size, progress=not as_json)
    if html is not None:
        from mechscope.viz.sae_report import render_examples_html

        effects = [] if sae.site.startswith("head_out") else [logit_effect(lm, sae, f) for f in dict.fromkeys(chosen)]
        write_text_output(html, render_examples_html(result, logits=effects, model=lm.source))
    if as_json:
        print_json(result)
        return
    for entry in result.features:
        rows = [
            [
                f"{e.activation:.4f}",
                str(e.prompt),
                str(e.position),
                "".join(
                    f"[bold red]{visible(t)}[/bold red]" if i == e.center else visible(t)
                    for i, t in enumerate(e.tokens)
                ),
            ]
            for e in entry.examples
        ]
        columns = [Column("activation", justify="right"), Column("prompt", justify="right")]
        columns += [Column("pos", justify="right"), Column("context", overflow="fold")]
        title = f"feature {entry.feature}: active on {entry.active_tokens} of {result.tokens} tokens"
        print_table(title, columns, rows)
    if not any(entry.examples for entry in result.features):
        console.print("no feature was active on this corpus", markup=False)
