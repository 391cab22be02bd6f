"""``mechscope sae train``: train a TopK or ReLU + L1 SAE on one site, streaming its activations.

The corpus is ``--prompts FILE`` (one document per line), else ``--documents`` documents of the organisms'
own corpus; 5% of it is kept out for the final evaluation unless ``--eval-prompts`` names a held-out file.
The folder ``-o`` receives the SAE in SAELens's layout, checkpoints as it trains (``train_state.pt``) and
``train_result.json``; ``--resume`` continues an interrupted run there, to the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json


def register(app: typer.Typer) -> None:
    """Adds ``train`` to the ``sae`` sub-app."""
    app.command("train")(sae_train)


def _corpus(path: Path | None, documents: int, seed: int) -> list[str]:
    """The lines of ``path``, else ``documents`` documents of the organisms' corpus drawn with ``seed``."""
    from mechscope.cli.inputs import at_least, read_corpus

    if path is not None:
        return read_corpus(path, None)
    from mechscope.zoo.corpus import text_documents

    return [d.text for d in text_documents(seed, at_least(documents, 1, "--documents"))]


@one_line_errors
@model_options
def sae_train(
    site: Annotated[str, typer.Option("--site", help="The site to read: resid_post.2, mlp_out.1, head_out.0 ...")],
    width: Annotated[int, typer.Option("--width", help="Number of features.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the SAE, its checkpoints and its result.")],
    model: ModelOptions,
    k: Annotated[int | None, typer.Option("--k", help="TopK: active features per token.")] = None,
    l1: Annotated[float | None, typer.Option("--l1", help="ReLU + L1 instead: the L1 coefficient.")] = None,
    tokens: Annotated[str, typer.Option("--tokens", help="Training tokens: 2M, 500K, 200000 ...")] = "2M",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tokens per optimizer step.")] = 4096,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak Adam LR (default 2e-4 / √(width / 16384)).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initialisation and the shuffles.")] = 0,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Training corpus, one document per line.")] = None,
    eval_prompts: Annotated[
        Path | None, typer.Option("--eval-prompts", help="Held-out corpus for the final evaluation.")
    ] = None,
    documents: Annotated[
        int, typer.Option("--documents", help="Without --prompts: documents of the organisms' corpus.")
    ] = 50_000,
    forward_batch_size: Annotated[int, typer.Option("--forward-batch-size", help="Prompts per forward pass.")] = 32,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints (default: a tenth).")
    ] = None,
    keep_first: Annotated[bool, typer.Option("--keep-first", help="Train on each document's first token too.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train an SAE on a site's activations (streamed, never all in memory) and write it in SAELens's layout.

    Example: mechscope sae train -m toy --site resid_post.2 --width 1024 --k 16 --tokens 2M -o saes/toy-L2/
    """
    from mechscope.cli.inputs import at_least, finite, token_count
    from mechscope.errors import InputError
    from mechscope.sae.train import train_sae

    budget = token_count(tokens, "--tokens")
    at_least(width, 1, "--width")
    at_least(batch_size, 1, "--batch-size")
    at_least(forward_batch_size, 1, "--forward-batch-size")
    if (k is None) == (l1 is None):
        raise InputError("give --k (TopK) or --l1 (ReLU + L1), exactly one of them")
    if l1 is not None:
        finite(l1, "--l1")
    corpus = _corpus(prompts, documents, seed)
    held_out = _corpus(eval_prompts, 0, 0) if eval_prompts is not None else None
    lm = model.load()
    sae, result = train_sae(
        lm, site, corpus, width=width, k=k, l1_coeff=l1, tokens=budget, batch_size=batch_size, lr=lr, seed=seed,
        out=out, checkpoint_every=checkpoint_every, resume=resume, progress=not as_json, eval_corpus=held_out,
        forward_batch_size=forward_batch_size, skip_first=not keep_first,
    )  # fmt: skip
    del sae
    if as_json:
        print_json(result, indent=None)
        return
    console.print(result.line(), markup=False)
    resumed = f" (resumed at step {result.resumed_at_step:,})" if result.resumed_at_step is not None else ""
    console.print(f"{result.tokens_per_s:,.0f} tokens/s{resumed}; SAE written to {out}", markup=False)
