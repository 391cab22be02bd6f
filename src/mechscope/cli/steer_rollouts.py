"""``mechscope steer rollouts``: steered rollouts next to vanilla and prompted baselines, optionally scored."""

from __future__ import annotations

import json
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
from mechscope.cli.output import print_json, print_line, print_table

if TYPE_CHECKING:
    from mechscope.core.direction import Direction
    from mechscope.core.lm import LanguageModel
    from mechscope.steering.scoring import HttpJudge

PromptedPrefixOpt = Annotated[
    str | None, typer.Option("--prompted-prefix", help="Persona before each question (the prompted baseline).")
]
PromptedSuffixOpt = Annotated[
    str | None, typer.Option("--prompted-suffix", help="Persona after the prompt, at the start of the answer.")
]
PromptedSystemOpt = Annotated[
    str | None, typer.Option("--prompted-system-prompt", help="System prompt of the prompted baseline.")
]
RolloutsOpt = Annotated[int, typer.Option("--rollouts", help="Samples per question and condition.")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature (0 = greedy).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Use vectors computed on another model.")]
JudgeUrlOpt = Annotated[
    str | None, typer.Option("--judge-url", help="OpenAI-compatible endpoint of an LLM judge (off by default).")
]
JudgeModelOpt = Annotated[str | None, typer.Option("--judge-model", help="Model name the judge endpoint serves.")]
JudgePromptOpt = Annotated[
    str | None, typer.Option("--judge-prompt", help="Judge prompt template with {text} (and optionally {trait}).")
]


def make_judge(url: str | None, model: str | None, prompt: str | None) -> HttpJudge | None:
    """The `HttpJudge` that ``--judge-url/--judge-model/--judge-prompt`` describe, or None without a URL.

    Raises:
        InputError: a model or prompt without a URL, a URL without a model, or a bad URL / template.
    """
    from mechscope.errors import InputError

    if url is None:
        if model is not None or prompt is not None:
            raise InputError("--judge-model and --judge-prompt need --judge-url")
        return None
    if not model:
        raise InputError("--judge-url needs --judge-model (the model name the endpoint serves)")
    from mechscope.steering.scoring import DEFAULT_JUDGE_PROMPT, HttpJudge

    return HttpJudge(url, model, prompt if prompt is not None else DEFAULT_JUDGE_PROMPT)


def load_vectors(paths: list[Path], lm: LanguageModel, *, force: bool = False) -> dict[str, Direction]:
    """Name -> direction for each ``.safetensors`` direction file or trained-run folder (named by its stem).

    Raises:
        InputError: a path that is neither.
    """
    from mechscope.core.direction import Direction
    from mechscope.errors import InputError

    vectors: dict[str, Direction] = {}
    for path in paths:
        if path.is_dir():
            from mechscope.steering.vector import SteeringVector

            direction: Direction = SteeringVector.from_pretrained(path, lm).direction
        elif path.suffix == ".safetensors":
            direction = Direction.load(path, lm, force=force)
        elif not path.exists():
            raise InputError(f"no vector at '{path}'; give a .safetensors direction file or a trained run folder")
        else:
            raise InputError(f"'{path}' is not a vector: give a .safetensors direction file or a trained run folder")
        name = path.stem if path.is_file() else path.resolve().name
        unique, n = name, 2
        while unique in vectors or unique in ("vanilla", "prompted"):
            unique, n = f"{name}-{n}", n + 1
        vectors[unique] = direction
    return vectors


def _load_vectors(lm: LanguageModel, paths: list[Path], force: bool) -> dict[str, Direction]:
    """`load_vectors` as a runner call (on a Ray worker's model when the driver holds none)."""
    return load_vectors(paths, lm, force=force)


def register(app: typer.Typer) -> None:
    """Adds ``rollouts`` to the ``steer`` sub-app."""
    app.command("rollouts")(steer_rollouts)


@one_line_errors
@model_options
def steer_rollouts(
    model: ModelOptions,
    questions: Annotated[Path, typer.Option("--questions", help='JSONL {"question": ...} or one per line.')],
    vectors: Annotated[
        list[Path], typer.Option("--vectors", help="Direction .safetensors files or trained run folders.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for rollouts.parquet (and scores).")],
    scales: Annotated[str, typer.Option("--scales", help="learned and/or numbers, e.g. learned,-4,4.")] = "learned",
    normalize: Annotated[
        bool, typer.Option("--normalize", help="A number s adds s x unit(vector) x mean residual norm.")
    ] = False,
    rollouts: RolloutsOpt = 1,
    seed: Annotated[int, typer.Option("--seed", help="Base seed of the sampling.")] = 0,
    max_new_tokens: MaxNewTokensOpt = 40,
    temperature: TemperatureOpt = 1.0,
    prompted_prefix: PromptedPrefixOpt = None,
    prompted_suffix: PromptedSuffixOpt = None,
    prompted_system_prompt: PromptedSystemOpt = None,
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", help="System prompt of every row.")] = None,
    classifier_data: Annotated[
        Path | None, typer.Option("--classifier-data", help='JSONL {"text": ..., "label": 0|1} to score with.')
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Questions per generate call.")] = 16,
    no_fluency: Annotated[bool, typer.Option("--no-fluency", help="Skip the perplexity measure.")] = False,
    force: ForceOpt = False,
    judge_url: JudgeUrlOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_prompt: JudgePromptOpt = None,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rollouts for every vector x scale, next to vanilla and prompted baselines; scored with --classifier-data.

    Each (condition, rollout, batch) generate call is a shard under its own seed, kept in
    OUT/rollouts.parquet.parts/ until the table is written: rerun to resume after a kill. With --backend ray
    the shards run on Ray workers; the fluency (perplexity) score then loads the model once more in this
    process after the workers are released (--no-fluency skips it).

    Example: mechscope steer rollouts -m toy --questions q.jsonl --vectors pirate.safetensors --scales learned,4
    --prompted-prefix "<pirate> " --classifier-data labelled.jsonl -o rollouts/
    """
    from mechscope.cli.output import check_outputs, write_text_output
    from mechscope.errors import InputError
    from mechscope.steering.rollout import parse_scales
    from mechscope.steering.rollout import rollouts as run_rollouts
    from mechscope.steering.rollout_results import read_labelled, read_questions

    asked = read_questions(questions)
    chosen = parse_scales(scales)
    labelled = read_labelled(classifier_data) if classifier_data is not None else None
    judge = make_judge(judge_url, judge_model, judge_prompt)
    if judge is not None and labelled is None:
        raise InputError("the judge scores next to the classifier; give --classifier-data too")
    if output.exists() and not output.is_dir():
        raise InputError(f"-o '{output}' is a file; give a folder for rollouts.parquet")
    from mechscope.distributed.runner import check_backend, make_runner

    check_backend(backend, address=address, workers=workers)
    output.mkdir(parents=True, exist_ok=True)
    check_outputs(output / "rollouts.parquet")

    lm = model.load() if backend == "local" else None
    paths = [path.absolute() for path in vectors]  # a Ray worker's working folder may differ from ours
    with make_runner(backend, model.spec(), lm=lm, address=address, workers=workers) as runner:
        result = run_rollouts(
            None,
            asked,
            runner.call(_load_vectors, paths, force),
            scales=chosen,
            normalize=normalize,
            rollouts=rollouts,
            seed=seed,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            system_prompt=system_prompt,
            prompted_prefix=prompted_prefix,
            prompted_suffix=prompted_suffix,
            prompted_system_prompt=prompted_system_prompt,
            batch_size=batch_size,
            dataset=questions.stem,
            progress=not as_json,
            out=output / "rollouts.parquet",
            runner=runner,
        )
    if labelled is None:
        if as_json:
            shown = {"rollouts": str(output / "rollouts.parquet"), "rows": len(result.rows), "backend": backend}
            print_json(shown, indent=None)
        else:
            print_line(f"wrote {len(result.rows)} rollouts to {output / 'rollouts.parquet'}")
        return
    from mechscope.steering.evaluate import EmbeddingClassifier
    from mechscope.steering.scoring import score_rollouts, summary_rows

    classifier = EmbeddingClassifier().fit(*labelled)
    if lm is None and not no_fluency:
        lm = model.load()  # the workers are gone: the perplexity needs the model here
    evaluation = score_rollouts(result, classifier, lm=None if no_fluency else lm, judge=judge, batch_size=batch_size)
    evaluation.to_parquet(output / "scores.parquet")
    summary = evaluation.summary_json()
    if judge is not None:
        summary["judge"] = {"url": judge.url, "model": judge.model, "refusals": judge.refusals}
    write_text_output(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    if as_json:
        print_json(summary, indent=None)
        return
    headers = ["condition", "rows", "score [95% CI]", "vs vanilla [95% CI]", "perplexity (x vanilla)", "judge"]
    columns: list[str | Column] = [*headers, "success"]
    print_table(f"{evaluation.dataset} on {evaluation.model}", columns, summary_rows(evaluation))
    if judge is not None:
        print_line(f"judge {judge.model}: {judge.refusals} of {len(evaluation.rows)} rollouts refused")
