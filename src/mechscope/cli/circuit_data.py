"""``mechscope circuit dataset create|show`` and ``circuit collect``: labelled prompts and their activations."""

from __future__ import annotations

import json
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
from mechscope.cli.output import console, print_json, print_table

dataset_app = typer.Typer(
    help="Labelled prompt sets: the built-in tool-calling set, or your own.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Adds ``dataset`` and ``collect`` to the ``circuit`` sub-app."""
    app.add_typer(dataset_app, name="dataset")
    app.command("collect")(collect_command)


@dataset_app.command("create")
@one_line_errors
def dataset_create(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the prompt set (JSON).")],
    per_tool: Annotated[int, typer.Option("--per-tool", help="Prompts per tool (eight tools).")] = 25,
    chat: Annotated[
        int | None, typer.Option("--chat", help="Chit-chat prompts (default: as many as tool ones).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the slot values and the order.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Write the built-in tool-calling set: requests for eight tools (label 1) and chit-chat (label 0).

    Example: mechscope circuit dataset create -o prompts.json --per-tool 25 --seed 0
    """
    from mechscope.cli.output import check_outputs
    from mechscope.probing.dataset import tool_prompt_dataset

    check_outputs(out)
    data = tool_prompt_dataset(per_tool=per_tool, seed=seed, chat=chat)
    data.save(out)
    if as_json:
        print_json({"path": str(out), "prompts": len(data), "tools": data.tools(), "digest": data.digest()})
        return
    console.print(
        f"wrote {len(data)} prompts ({len(data.tools())} tools, {len(set(data.templates()))} templates) to {out}"
    )


@dataset_app.command("show")
@one_line_errors
def dataset_show(
    path: Annotated[Path, typer.Argument(help="A prompt set: JSON, JSONL or CSV.")],
    examples: Annotated[int, typer.Option("--examples", help="Example prompts to print.")] = 5,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a prompt set: counts per label, sub-label and template, and a few examples.

    Example: mechscope circuit dataset show prompts.json
    """
    from mechscope.probing.dataset import load_prompts

    data = load_prompts(path)
    counts = Counter((p.label, p.sub_label) for p in data.prompts)
    per_label_templates = {
        label: len({p.template for p in data.prompts if p.label == label}) for label in sorted(set(data.labels()))
    }
    per_kind_templates = Counter(
        (label, sub) for label, sub, _ in {(p.label, p.sub_label, p.template) for p in data.prompts}
    )
    if as_json:
        print_json(
            {
                "name": data.name,
                "prompts": len(data),
                "digest": data.digest(),
                "labels": {str(k): v for k, v in sorted(Counter(data.labels()).items())},
                "sub_labels": {f"{label}/{sub}": n for (label, sub), n in sorted(counts.items())},
                "templates": per_label_templates,
                "examples": [p.model_dump() for p in data.prompts[:examples]],
            }
        )
        return
    names = data.label_names
    rows = [
        [str(label), names.get(label, ""), sub or "-", str(n), str(per_kind_templates[(label, sub)])]
        for (label, sub), n in sorted(counts.items())
    ]
    print_table(f"{data.name}: {len(data)} prompts", ["label", "means", "sub-label", "prompts", "templates"], rows)
    for p in data.prompts[:examples]:
        console.print(f"[{p.label}] {p.prompt}", markup=False, highlight=False)


@one_line_errors
@model_options
def collect_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="The prompt set (dataset create, or JSON/JSONL/CSV).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the activations (resumable).")],
    model: ModelOptions,
    sites: Annotated[
        str, typer.Option("--sites", help="Comma-separated site patterns (default every layer's resid_post).")
    ] = "resid_post",
    positions: Annotated[str, typer.Option("--positions", help="last or mean (over each prompt's tokens).")] = "last",
    shard_size: Annotated[int, typer.Option("--shard-size", help="Prompts per shard file.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")] = 32,
    store_dtype: Annotated[str, typer.Option("--store-dtype", help="float32 or float16 on disk.")] = "float32",
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Collect the prompts' activations into a folder of safetensors shards; rerun to resume.

    With --backend ray, Ray workers (one per GPU, else per CPU) each load the model and write their shards
    into the folder (which every worker must see); the folder is the same on either backend.

    Example: mechscope circuit collect -m toy -d prompts.json -o acts/ --positions last
    Example: mechscope circuit collect -m MODEL -d prompts.json -o acts/ --backend ray --address auto
    """
    from mechscope.probing.collect import collect
    from mechscope.probing.dataset import load_prompts

    dataset = load_prompts(data)
    patterns = [s.strip() if "." in s.strip() else f"{s.strip()}.*" for s in sites.split(",") if s.strip()]
    with model.runner(backend, address=address, workers=workers) as runner:
        acts = collect(
            None, dataset, out, sites=patterns, positions=positions, shard_size=shard_size, batch_size=batch_size,
            dtype=store_dtype, progress=not as_json, runner=runner,
        )  # fmt: skip
    if as_json:
        print_json({**json.loads(acts.manifest.model_dump_json()), "backend": backend})
        return
    m = acts.manifest
    console.print(
        f"{m.n_prompts} prompts x {len(m.sites)} sites ({m.positions} position, d={m.d_model}) in {m.n_shards} "
        f"shards at {out}"
    )
