"""``mechscope steer search``: the best layer x scale of a trained steering vector, by trait gain and fluency.

The rule is `mechscope.steering.layer_search`'s: a candidate counts only when fluent (perplexity ratio to vanilla at
most ``--max-perplexity-ratio``) and is ranked by the lower CI bound of its classifier-score gain over vanilla.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import print_json, print_line, print_table
from mechscope.cli.steer_rollouts import (
    ForceOpt,
    JudgeModelOpt,
    JudgePromptOpt,
    JudgeUrlOpt,
    MaxNewTokensOpt,
    PromptedPrefixOpt,
    PromptedSuffixOpt,
    PromptedSystemOpt,
    RolloutsOpt,
    TemperatureOpt,
    load_vectors,
    make_judge,
)

if TYPE_CHECKING:
    from mechscope.core.direction import Direction
    from mechscope.core.lm import LanguageModel
    from mechscope.steering.rollout_results import Interval
    from mechscope.steering.search_results import SteeringSearch


def register(app: typer.Typer) -> None:
    """Adds ``search`` to the ``steer`` sub-app."""
    app.command("search")(steer_search)


def parse_layers(text: str) -> str | list[int]:
    """``all`` or comma-separated layer numbers (negatives count from the end).

    Raises:
        InputError: anything else.
    """
    from mechscope.errors import InputError

    if text.strip().lower() == "all":
        return "all"
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--layers must be all or comma-separated integers, got '{text}'") from None
    if not layers:
        raise InputError("--layers is empty; write all or e.g. 1,2")
    return layers


def _by_layer(paths: list[Path], lm: LanguageModel, force: bool) -> dict[int, Direction]:
    from mechscope.errors import InputError

    given: dict[int, Direction] = {}
    for name, direction in load_vectors(paths, lm, force=force).items():
        if direction.layer in given:
            raise InputError(f"two --vectors are for layer {direction.layer} ({name} is the second); give one a layer")
        given[direction.layer] = direction
    return given


@one_line_errors
@model_options
def steer_search(
    model: ModelOptions,
    questions: Annotated[Path, typer.Option("--questions", help='Held-out JSONL {"question": ...} or lines.')],
    classifier_data: Annotated[
        Path, typer.Option("--classifier-data", help='JSONL {"text": ..., "label": 0|1}, disjoint from rollouts.')
    ],
    data: Annotated[Path | None, typer.Option("--data", help="Training JSONL (trains a vector per layer).")] = None,
    vectors: Annotated[
        list[Path] | None, typer.Option("--vectors", help="Run folders / direction files to use instead.")
    ] = None,
    layers: Annotated[str, typer.Option("--layers", help="all or comma-separated layers.")] = "all",
    scales: Annotated[str, typer.Option("--scales", help="learned and/or numbers, e.g. learned,0.5,2.")] = "learned",
    normalize: Annotated[bool, typer.Option("--normalize", help="Scales in units of the mean residual norm.")] = False,
    max_perplexity_ratio: Annotated[
        float, typer.Option("--max-perplexity-ratio", help="Fluent: perplexity at most this x vanilla's.")
    ] = 3.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per layer.")] = 5,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate of AdamW.")] = 1.0,
    schedule: Annotated[str, typer.Option("--schedule", help="constant or cosine.")] = "cosine",
    val_tokens: Annotated[int, typer.Option("--val-tokens", help="Completion tokens held out.")] = 10_000,
    patience: Annotated[int | None, typer.Option("--patience", help="Early stopping per layer.")] = None,
    train_prompted_prefix: Annotated[
        str | None, typer.Option("--train-prompted-prefix", help="Prefix of the training prompted baseline.")
    ] = None,
    prompted_prefix: PromptedPrefixOpt = None,
    prompted_suffix: PromptedSuffixOpt = None,
    prompted_system_prompt: PromptedSystemOpt = None,
    positions: Annotated[
        str, typer.Option("--positions", help="Where the vector is added, in training and rollouts: all or prompt.")
    ] = "all",
    rollouts: RolloutsOpt = 1,
    max_new_tokens: MaxNewTokensOpt = 40,
    temperature: TemperatureOpt = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples / questions per forward pass.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the training split and the sampling.")] = 0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for search.parquet and search.json.")
    ] = None,
    force: ForceOpt = False,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_prompt: JudgePromptOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a vector per layer (or take --vectors), roll out every layer x scale, rank by gain when fluent.

    Example: mechscope steer search -m toy --data pirate.jsonl --layers 1,2 --scales learned,0.5
    --questions q.jsonl --classifier-data labelled.jsonl --prompted-suffix " <pirate>"
    """
    from mechscope.cli.output import check_outputs, write_text_output
    from mechscope.errors import InputError
    from mechscope.steering.layer_search import search
    from mechscope.steering.rollout import parse_scales
    from mechscope.steering.rollout_results import read_labelled, read_questions

    asked = read_questions(questions)
    chosen_scales = parse_scales(scales)
    chosen_layers = parse_layers(layers)
    texts, labels = read_labelled(classifier_data)
    judge = make_judge(judge_url, judge_model, judge_prompt)
    if data is None and not vectors:
        raise InputError("give --data to train a vector per layer, or --vectors to search over")
    if output is not None:
        if output.exists() and not output.is_dir():
            raise InputError(f"-o '{output}' is a file; give a folder for search.parquet")
        output.mkdir(parents=True, exist_ok=True)
        check_outputs(output / "search.parquet", output / "search.json")
    lm = model.load()
    given = _by_layer(list(vectors), lm, force) if vectors else None
    from mechscope.steering.evaluate import EmbeddingClassifier

    classifier = EmbeddingClassifier().fit(texts, labels)
    train_options: dict[str, Any] = {"epochs": epochs, "lr": lr, "schedule": schedule, "val_tokens": val_tokens}
    train_options.update({"patience": patience, "batch_size": batch_size, "seed": seed})
    train_options["prompted_prefix"] = train_prompted_prefix
    if positions not in ("all", "prompt"):
        raise InputError(f"unknown --positions '{positions}'; use all or prompt (the prompt's tokens only)")
    train_options["positions"] = positions  # the trainer's "prompt" and the rollouts' "prompt" pass are the same
    rollout_options: dict[str, Any] = {"normalize": normalize, "rollouts": rollouts, "seed": seed}
    rollout_options["batch_size"] = batch_size
    rollout_options.update({"max_new_tokens": max_new_tokens, "temperature": temperature})
    rollout_options.update({"prompted_prefix": prompted_prefix, "prompted_suffix": prompted_suffix})
    rollout_options["prompted_system_prompt"] = prompted_system_prompt
    rollout_options["positions"] = positions
    found = search(
        lm,
        data,
        asked,
        classifier,
        layers=chosen_layers,
        scales=chosen_scales,
        vectors=given,
        train_options=train_options,
        rollout_options=rollout_options,
        max_perplexity_ratio=max_perplexity_ratio,
        judge=judge,
        dataset=questions.stem,
        progress=not as_json,
    )
    if output is not None:
        found.to_parquet(output / "search.parquet")
        write_text_output(output / "search.json", found.model_dump_json(indent=2) + "\n")
    if as_json:
        print_json({**found.model_dump(), "best": None if found.best is None else found.best.model_dump()})
        return
    _show(found)


def _interval(ci: Interval | None) -> str:
    return "-" if ci is None else f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]"


def _show(found: SteeringSearch) -> None:
    rows = []
    for c in found.candidates:
        ratio = "-" if c.perplexity_ratio is None else f"{c.perplexity_ratio:.2f}x"
        fluent = "-" if c.fluent is None else ("yes" if c.fluent else "no")
        rank = "excluded" if c.rank is None else str(c.rank)
        rows.append([str(c.layer), c.scale, _interval(c.gain), ratio, fluent, rank])
    columns = ["layer", "scale", "gain vs vanilla [95% CI]", "perplexity (x vanilla)", "fluent", "rank"]
    print_table(f"steering search on {found.model} ({found.dataset})", columns, rows)
    if found.prompted_gain is not None:
        times = found.prompted_perplexity_ratio
        print_line(f"prompted baseline: gain {_interval(found.prompted_gain)}, perplexity {times or 0:.2f}x vanilla")
    best = found.best
    if best is None:
        print_line(f"no fluent candidate (perplexity at most {found.max_perplexity_ratio:g}x vanilla's)")
    else:
        verdict = "steers reliably" if best.success else "its gain interval is not above 0"
        print_line(f"best: layer {best.layer}, scale {best.scale}: gain {_interval(best.gain)} ({verdict})")
