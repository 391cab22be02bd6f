"""``mechscope concepts interpreter train``, ``evaluate``, ``uncertain`` and ``validate-convergence``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import check_outputs, console, print_json, print_table

if TYPE_CHECKING:
    from mechscope.concepts.encyclopedia import Encyclopedia

DataOpt = Annotated[Path, typer.Option("--data", help="The encyclopedia (HDF5).")]
InterpOpt = Annotated[Path, typer.Option("--interpreter", help="Folder written by concepts interpreter train.")]
HeldOutOpt = Annotated[str, typer.Option("--held-out", help="templates (unseen wording) or concepts (unseen ones).")]

interpreter_app = typer.Typer(help="The interpreter: reads the concept back from an activation.")


def register(app: typer.Typer) -> None:
    """Adds ``interpreter train``, ``evaluate``, ``uncertain`` and ``validate-convergence`` to ``concepts``."""
    app.add_typer(interpreter_app, name="interpreter")
    app.command("evaluate")(evaluate_command)
    app.command("uncertain")(uncertain_command)
    app.command("validate-convergence")(convergence_command)


def true_concept_score(folder: Path, encyclopedia: Encyclopedia) -> Any:
    """Stage 3's score: the interpreter in ``folder``'s probability of each sample's true concept."""
    from mechscope.concepts.evaluate import check_match, true_concept_probability
    from mechscope.concepts.interpreter import Interpreter

    interpreter = Interpreter.load(folder)
    check_match(interpreter, encyclopedia)
    return true_concept_probability(interpreter, encyclopedia.info.layers)


@interpreter_app.command("train")
@one_line_errors
def train_command(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the interpreter (safetensors + JSON).")],
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training rows.")] = 10,
    hierarchical: Annotated[bool, typer.Option("--hierarchical", help="Predict the category first.")] = False,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layers to read (default every captured layer).")
    ] = None,
    held_out: HeldOutOpt = "templates",
    d_model: Annotated[int, typer.Option("--d-model", help="The encoder's width.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 256,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (mixed precision on GPU).")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Train the interpreter (projection, small transformer encoder, concept logits) on the training rows.

    Example: mechscope concepts interpreter train --data enc.h5 --epochs 10 --hierarchical -o interp/
    """
    from mechscope.cli.concepts import parse_int_list
    from mechscope.concepts.encyclopedia import Encyclopedia
    from mechscope.concepts.evaluate import save_provenance, train
    from mechscope.concepts.interpreter import InterpreterConfig

    enc = Encyclopedia(data)
    config = InterpreterConfig(
        d_model=d_model, epochs=epochs, batch_size=batch_size, lr=lr, hierarchical=hierarchical, seed=seed
    )
    chosen = parse_int_list(layers) if layers else None
    interpreter, log = train(enc, layers=chosen, held_out=held_out, config=config, device=device, progress=not as_json)
    interpreter.save(out)
    save_provenance(out, enc, held_out)
    if as_json:
        print_json({"path": str(out), "layers": interpreter.layers, "log": log.model_dump()})
        return
    console.print(
        f"trained on {log.n_train} rows (+{log.n_synthetic} synthetic) of {len(enc)} concepts at layers "
        f"{interpreter.layers}; final train accuracy {log.train_accuracy[-1]:.3f} -> {out}",
        markup=False,
    )


@one_line_errors
def evaluate_command(
    data: DataOpt,
    interpreter: InterpOpt,
    held_out: HeldOutOpt = "templates",
    linear: Annotated[bool, typer.Option("--linear/--no-linear", help="Also fit the linear-probe baseline.")] = True,
    html: Annotated[Path | None, typer.Option("--html", help="Write the reliability plot (HTML).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Held-out top-1/top-5 against chance and baselines, calibration (ECE), accuracy per category.

    Example: mechscope concepts evaluate --data enc.h5 --interpreter interp/ --held-out templates
    """
    from mechscope.concepts.encyclopedia import Encyclopedia
    from mechscope.concepts.evaluate import evaluate, read_provenance
    from mechscope.concepts.interpreter import Interpreter
    from mechscope.errors import InputError

    check_outputs(html)
    enc = Encyclopedia(data)
    trained = read_provenance(interpreter).get("held_out")
    if held_out == "concepts" and trained != "concepts":
        raise InputError("this interpreter saw every concept; train it with --held-out concepts to evaluate that")
    result = evaluate(enc, Interpreter.load(interpreter), held_out=held_out, linear=linear)
    if html is not None:
        from mechscope.cli.output import write_text_output
        from mechscope.viz.concepts_report import reliability_report

        write_text_output(html, reliability_report(result.reliability, title=f"Interpreter on {data}"))
    if as_json:
        print_json(result)
        return
    if result.held_out == "concepts":
        rows = [[s.name, f"{s.accuracy:.3f}", f"{s.majority:.3f}", str(s.n)] for s in result.categories]
        print_table("category of held-out concepts", ["reader", "accuracy", "majority", "n"], rows)
    else:
        rows = [[s.name, f"{s.top1:.3f}", f"{s.top5:.3f}", f"{s.chance_top1:.2g}", str(s.n)] for s in result.readers]
        print_table(f"held-out templates, layers {result.layers}", ["reader", "top-1", "top-5", "chance", "n"], rows)
        console.print(f"ECE {result.ece:.3f} (confidence 1-H/Hmax), {result.ece_top_probability:.3f} (top p)")
    console.print(result.verdict(), markup=False)


@one_line_errors
def uncertain_command(
    data: DataOpt,
    interpreter: InterpOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="The uncertain concepts (JSONL, for refine).")],
    below: Annotated[float, typer.Option("--below", help="Confidence under which a concept is uncertain.")] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """List the concepts the interpreter is unsure of (or misreads) on their own mean, for refinement.

    Example: mechscope concepts uncertain --data enc.h5 --interpreter interp/ --below 0.5 -o uncertain.jsonl
    """
    from mechscope.concepts.concept import write_concepts
    from mechscope.concepts.encyclopedia import Encyclopedia
    from mechscope.concepts.evaluate import check_match, uncertain
    from mechscope.concepts.interpreter import Interpreter

    check_outputs(out)
    enc = Encyclopedia(data)
    model = Interpreter.load(interpreter)
    check_match(model, enc)
    found = uncertain(enc, model, below)
    write_concepts(out, [enc.concepts[i] for i, _, _ in found])
    if as_json:
        print_json({"path": str(out), "uncertain": len(found), "of": len(enc), "below": below})
        return
    misread = sum(1 for _, _, right in found if not right)
    console.print(f"{len(found)} of {len(enc)} concepts uncertain ({misread} misread) -> {out}", markup=False)


@one_line_errors
@model_options
def convergence_command(
    model: ModelOptions,
    concepts: Annotated[
        list[str] | None, typer.Option("--concepts", help="WordNet synset ids or terms (space-separated).")
    ] = None,
    concept_file: Annotated[Path | None, typer.Option("--file", help="A concept list instead (JSONL).")] = None,
    max_n: Annotated[int, typer.Option("--max-n", help="Contexts per concept (at most 24).")] = 20,
    layer: Annotated[int, typer.Option("--layer", "-l", help="The layer (negative from the end).")] = -1,
    html: Annotated[Path | None, typer.Option("--html", help="Write the convergence plot (HTML).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """How many template contexts a concept's mean needs: curves against a held-out reference mean.

    Example: mechscope concepts validate-convergence -m MODEL --concepts dog democracy running happiness gravity
    """
    from mechscope.concepts.concept import read_concepts
    from mechscope.concepts.convergence import convergence_study
    from mechscope.errors import InputError

    check_outputs(html)
    if concept_file is not None:
        chosen = read_concepts(concept_file)
    elif concepts:
        chosen = _resolve_terms([word for item in concepts for word in item.split()])
    else:
        raise InputError("name the concepts: --concepts dog democracy ... or --file concepts.jsonl")
    lm = model.load()
    study = convergence_study(lm, chosen, layer=layer, max_n=max_n, progress=not as_json)
    if html is not None:
        from mechscope.cli.output import write_text_output
        from mechscope.viz.concepts_report import convergence_report

        write_text_output(html, convergence_report(study))
    if as_json:
        print_json(study)
        return
    rows = [
        [c.id, c.kind or "-", f"{c.relative_difference[-1]:.3f}", f"{c.cosine[-1]:.3f}", str(c.converged_at or "-")]
        for c in study.concepts
    ]
    print_table(f"convergence at layer {study.layer}", ["concept", "kind", "rel. diff", "cosine", "converged at"], rows)
    console.print(f"converged by n=10: {study.fraction_converged(10):.0%}", markup=False)


def _resolve_terms(words: list[str]) -> Any:
    """WordNet synsets for words: an id (``dog.n.01``) as is, a bare word as its first noun sense."""
    from mechscope.concepts.concept import ConceptList
    from mechscope.concepts.wordnet import reader, synset_concept
    from mechscope.errors import InputError

    wn = reader()
    found = []
    for word in words:
        try:
            synset = wn.synset(word) if word.count(".") == 2 else next(iter(wn.synsets(word, pos="n")), None)
        except Exception:
            synset = None
        if synset is None:
            raise InputError(f"'{word}' is not a WordNet noun or synset id (e.g. dog.n.01)")
        found.append(synset_concept(synset))
    return ConceptList(found)
