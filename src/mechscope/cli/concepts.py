"""``mechscope concepts list|bootstrap|show|refine``: build and grow a concept encyclopedia.

The readers (interpreter, evaluate, uncertain, convergence) live in `mechscope.cli.concepts_readers`, the
lenses, monitor and steering in `mechscope.cli.concepts_lenses`; both add their commands to `app`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.options import (
    AddressOpt,
    BackendOpt,
    JsonOpt,
    ModelOptions,
    WorkersOpt,
    model_options,
    one_line_errors,
)
from mechscope.cli.output import check_outputs, console, print_json, print_table

app = typer.Typer(
    help="Concept encyclopedia: activations of thousands of concepts, readers of them, lenses, monitoring.",
    no_args_is_help=True,
)

LayersOpt = Annotated[str, typer.Option("--layers", help="Comma-separated layers; negative count from the end.")]


def parse_int_list(text: str) -> list[int]:
    """``"-3,-2,-1"`` → ``[-3, -2, -1]``."""
    from mechscope.errors import InputError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"'{text}' is not a comma-separated list of layer numbers, e.g. -3,-2,-1") from None


@app.command("list")
@one_line_errors
def list_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the concepts (JSONL).")],
    source: Annotated[str, typer.Option("--source", help="wordnet, toyworld, or file.")] = "wordnet",
    pos: Annotated[str, typer.Option("--pos", help="WordNet part of speech: noun, verb, adj, adv.")] = "noun",
    limit: Annotated[int | None, typer.Option("--limit", help="The first N concepts (in the source's order).")] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="N concepts at random (seeded), in order.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --sample.")] = 0,
    file: Annotated[Path | None, typer.Option("--file", help="With --source file: JSONL or one term per line.")] = None,
    single_word: Annotated[bool, typer.Option("--single-word", help="Skip multi-word terms.")] = False,
    unique_terms: Annotated[
        bool, typer.Option("--unique-terms/--all-senses", help="Keep only the first sense of a term.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Write a concept list: WordNet 3.0 synsets (offline), the organisms' world, or your own file.

    Example: mechscope concepts list --source wordnet --pos noun --limit 50000 -o concepts.jsonl
    """
    from mechscope.concepts.concept import write_concepts
    from mechscope.concepts.sources import load_concepts

    check_outputs(out)
    concepts = load_concepts(
        source,
        path=file,
        pos=pos,
        limit=limit,
        single_word=single_word,
        unique_terms=unique_terms,
        sample=sample,
        seed=seed,
    )
    write_concepts(out, concepts)
    categories = Counter(c.category for c in concepts)
    if as_json:
        print_json({"path": str(out), "concepts": len(concepts), "categories": dict(categories.most_common())})
        return
    console.print(f"wrote {len(concepts)} concepts ({len(categories)} categories) to {out}", markup=False)


@app.command("bootstrap")
@one_line_errors
@model_options
def bootstrap_command(
    concepts: Annotated[Path, typer.Option("--concepts", "-c", help="The concept list (concepts list).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The encyclopedia to write (HDF5).")],
    model: ModelOptions,
    layers: LayersOpt = "-1",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Terms per forward pass.")] = 128,
    pooling: Annotated[
        str, typer.Option("--pooling", help="mean (all tokens), term, or term_last (for monitoring lenses).")
    ] = "mean",
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stage 0: one pass per term, mean-pooled at each layer, into HDF5. Rerun to resume after a kill.

    Each batch is a shard; with --backend ray, Ray workers (one per GPU, else per CPU) run the shards and
    a worker that dies is restarted and its shard rerun. The HDF5 file is the same on either backend.

    Example: mechscope concepts bootstrap -m MODEL -c concepts.jsonl --layers -3,-2,-1 -o enc.h5
    Example: mechscope concepts bootstrap -m MODEL -c concepts.jsonl -o enc.h5 --backend ray --address auto
    """
    import time

    from mechscope.concepts.bootstrap import bootstrap
    from mechscope.concepts.concept import read_concepts

    check_outputs(out)
    concept_list = read_concepts(concepts)
    chosen = parse_int_list(layers)
    with model.runner(backend, address=address, workers=workers) as runner:
        start = time.perf_counter()  # after the model loads (on every worker), like the local figure
        enc = bootstrap(
            None, concept_list, out, layers=chosen, batch_size=batch_size, pooling=pooling, progress=not as_json,
            runner=runner,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    if as_json:
        summary = {"path": str(out), "concepts": len(enc), "layers": list(enc.info.layers), "backend": backend}
        print_json({**summary, "seconds": seconds})
        return
    console.print(
        f"{len(enc)} concepts at layers {list(enc.info.layers)} in {seconds:.1f} s "
        f"({len(enc) / max(seconds, 1e-9):.0f}/s) -> {out}",
        markup=False,
    )


@app.command("show")
@one_line_errors
def show_command(
    data: Annotated[Path, typer.Argument(help="An encyclopedia (HDF5).")],
    as_json: JsonOpt = False,
) -> None:
    """Summarise an encyclopedia: model, layers, stage, samples per concept and per stage.

    Example: mechscope concepts show enc.h5
    """
    from dataclasses import asdict

    from mechscope.concepts.encyclopedia import Encyclopedia

    enc = Encyclopedia(data)
    samples = enc.samples(layers=[])
    by_stage = Counter(int(s) for s in samples.stage)
    held_out = int((samples.split == 1).sum())
    info = asdict(enc.info)
    summary = {
        **info,
        "concepts": len(enc),
        "samples": len(samples),
        "held_out_samples": held_out,
        "samples_by_stage": {str(k): v for k, v in sorted(by_stage.items())},
        "concepts_by_stage": {str(k): v for k, v in sorted(Counter(int(s) for s in enc.stage()).items())},
    }
    if as_json:
        print_json(summary)
        return
    rows = [[name, str(value)] for name, value in summary.items()]
    print_table(f"encyclopedia {data}", ["field", "value"], rows)


@app.command("refine")
@one_line_errors
@model_options
def refine_command(
    data: Annotated[Path, typer.Option("--data", help="The encyclopedia to refine (changed in place, safely).")],
    model: ModelOptions,
    stage: Annotated[int, typer.Option("--stage", help="1 templates, 2 generated contexts, 3 adversarial.")] = 1,
    uncertain: Annotated[
        Path | None, typer.Option("--uncertain", help="Concepts to refine (concepts uncertain); default all.")
    ] = None,
    templates: Annotated[int, typer.Option("--templates", help="New contexts per concept.")] = 5,
    held_out: Annotated[
        int, typer.Option("--held-out", help="Stage 1: held-out-template contexts per concept (for evaluation).")
    ] = 2,
    bank: Annotated[str, typer.Option("--bank", help="Template bank: auto, general or toyworld.")] = "auto",
    generator: Annotated[
        str | None,
        typer.Option("--generator", help="Stage 2: the model that writes contexts, loaded here (default: --model)."),
    ] = None,
    interpreter: Annotated[
        Path | None, typer.Option("--interpreter", help="Stage 3: the interpreter whose weak spots to target.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Contexts per forward pass (and per shard).")] = 64,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add contexts for the (uncertain) concepts: stage 1 templates, 2 generated, 3 adversarial.

    --backend shards the capture of the chosen contexts (each --batch-size contexts a shard, kept in
    ENC.refine.parts/ until they are folded in; rerun to resume after a kill). On Ray, stage 2's contexts
    are written by one worker's model (by a --generator model loaded here if given), and stage 3's
    candidates are captured by one worker and scored here.

    Example: mechscope concepts refine -m MODEL --data enc.h5 --uncertain uncertain.jsonl --stage 1 --templates 5
    Example: mechscope concepts refine -m MODEL --data enc.h5 --stage 1 --backend ray --address auto
    """
    from mechscope.concepts import refine
    from mechscope.concepts.encyclopedia import Encyclopedia
    from mechscope.errors import InputError

    enc = Encyclopedia(data)
    indices = _chosen(enc, uncertain)
    if stage not in (1, 2, 3):
        raise InputError(f"refinement stages are 1, 2 and 3, not {stage}")
    if stage == 3 and interpreter is None:
        raise InputError("stage 3 targets an interpreter's weak spots: pass --interpreter interp/")
    with model.runner(backend, address=address, workers=workers) as runner:
        if stage == 1:
            contexts = refine.template_contexts(enc, indices, templates, held_out=held_out, bank=bank)
        elif stage == 2 and generator is None:
            contexts = runner.call(refine.generated_contexts, enc, indices, templates)
        elif stage == 2:
            writer = ModelOptions(model=str(generator), device=model.device).load()
            contexts = refine.generated_contexts(writer, enc, indices, templates)
        else:
            from mechscope.cli.concepts_readers import true_concept_score

            assert interpreter is not None
            score = true_concept_score(interpreter, enc)
            contexts = refine.adversarial_contexts(None, enc, indices, templates, score, bank=bank, runner=runner)
        enc = refine.refine(None, data, contexts, stage, batch_size=batch_size, progress=not as_json, runner=runner)
    result = {"path": str(data), "stage": stage, "concepts": len(indices), "contexts": len(contexts)}
    if as_json:
        print_json({**result, "samples_per_concept": enc.info.samples_per_concept, "backend": backend})
        return
    console.print(
        f"stage {stage}: {len(contexts)} contexts for {len(indices)} concepts; "
        f"{enc.info.samples_per_concept:.2f} training samples per concept now",
        markup=False,
    )


def _chosen(enc: object, uncertain: Path | None) -> list[int]:
    """The indices of the concepts listed in ``uncertain`` (a concept list), or every concept."""
    from mechscope.concepts.concept import read_concepts
    from mechscope.concepts.encyclopedia import Encyclopedia

    assert isinstance(enc, Encyclopedia)
    if uncertain is None:
        return list(range(len(enc)))
    return [enc.concepts.index(concept.id) for concept in read_concepts(uncertain)]


def _register_parts() -> None:
    from mechscope.cli import concepts_lenses, concepts_readers

    concepts_readers.register(app)  # interpreter train, evaluate, uncertain, validate-convergence
    concepts_lenses.register(app)  # lenses fit, monitor, steer


_register_parts()
