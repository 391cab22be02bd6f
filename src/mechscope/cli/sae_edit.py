"""``mechscope sae steer|ablate|links``: edit SAE features during a run, and find features along known vectors.

``steer`` generates with one feature's activation raised by ``-c`` at every position (`mechscope.ops.sae_edit`
with ``add``); the error term is kept, so the site moves by exactly ``c × W_dec[feature]`` (scaled per token by
the inverse of the SAE's input normalisation, when it has a per-token one) and nothing else changes.
``ablate`` zeroes features (error term kept) and reports a target token's logit and probability at the last
position, clean and ablated, with the features' clean activations there. ``links`` ranks features by cosine
with saved directions, probe directions and concept lenses; it loads no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column

from mechscope.cli.options import JsonOpt, ModelOptions, model_options, one_line_errors
from mechscope.cli.output import console, print_json, print_table, visible
from mechscope.cli.sae import ForceOpt, SaeOpt

if TYPE_CHECKING:
    from torch import Tensor

    from mechscope.core.lm import LanguageModel
    from mechscope.sae import SAE

PromptsOpt = Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt(s) to continue.")]
PositionsOpt = Annotated[str, typer.Option("--positions", help="all (every token) or last (each pass's newest).")]


def register(app: typer.Typer) -> None:
    """Adds ``steer``, ``ablate`` and ``links`` to the ``sae`` sub-app."""
    app.command("steer")(sae_steer)
    app.command("ablate")(sae_ablate)
    app.command("links")(sae_links)


def _check_feature(sae: SAE, feature: int, option: str) -> int:
    """``feature`` if the SAE has it; else a one-line error naming ``option``."""
    from mechscope.errors import InputError

    if not 0 <= feature < sae.d_sae:
        raise InputError(f"{option} {feature} is out of range; this SAE has features 0..{sae.d_sae - 1}")
    return feature


def _parse_features(text: str, sae: SAE) -> list[int]:
    """``12,99`` → ``[12, 99]`` (duplicates dropped), each checked against the SAE.

    Raises:
        InputError: nothing given, a part that is not an integer, or a feature outside the SAE.
    """
    from mechscope.errors import InputError

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise InputError("--features is empty; give feature indices separated by commas, e.g. 12,99")
    try:
        chosen = [int(part) for part in parts]
    except ValueError:
        raise InputError(f"bad --features '{text}'; write feature indices separated by commas, e.g. 12,99") from None
    return [_check_feature(sae, feature, "--features") for feature in dict.fromkeys(chosen)]


def _positions(positions: str) -> str:
    from mechscope.errors import InputError

    if positions not in ("all", "last"):
        raise InputError(f"unknown --positions '{positions}'; use all or last")
    return positions


def _load(model: ModelOptions, path: Path, force: bool) -> tuple[LanguageModel, SAE]:
    import mechscope.sae

    lm = model.load()
    return lm, mechscope.sae.load(path, lm, force=force)


@one_line_errors
@model_options
def sae_steer(
    prompt: PromptsOpt,
    sae_path: SaeOpt,
    feature: Annotated[int, typer.Option("--feature", "-f", help="The feature to add.")],
    coefficient: Annotated[float, typer.Option("--coefficient", "-c", help="Added to the feature's activation.")],
    model: ModelOptions,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 32,
    positions: PositionsOpt = "all",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate with a feature's activation raised by -c (error term kept): plain output first, then steered.

    Example: mechscope sae steer -m toy --sae saes/resid_post.2 --feature 123 -c 8 -p "The capital of France is"
    """
    import mechscope as ms
    from mechscope.cli.inputs import at_least, finite

    at_least(max_new_tokens, 1, "--max-new-tokens")
    finite(coefficient, "--coefficient")
    where = _positions(positions)
    lm, sae = _load(model, sae_path, force)
    _check_feature(sae, feature, "--feature")
    plain = lm.generate(list(prompt), max_new_tokens=max_new_tokens)
    with lm.intervene({sae.site: ms.ops.sae_edit(sae, add={feature: coefficient}, positions=where)}):
        steered = lm.generate(list(prompt), max_new_tokens=max_new_tokens)
    if as_json:
        rows = [{"prompt": p, "plain": a, "steered": b} for p, a, b in zip(prompt, plain, steered, strict=True)]
        print_json({"site": sae.site, "feature": feature, "coefficient": coefficient, "rows": rows}, indent=None)
        return
    console.print(f"feature {feature} + {coefficient:g} at {sae.site} ({where} positions)", markup=False)
    for text, before, after in zip(prompt, plain, steered, strict=True):
        console.print(f"[bold]{visible(text)}[/bold]\n  plain:   {visible(before)}\n  steered: {visible(after)}")


def _last(logits: Tensor, token: int) -> tuple[float, float]:
    """The logit and probability of ``token`` at the last position of a one-prompt batch."""
    import torch

    last = logits[0, -1].float()
    return float(last[token]), float(torch.softmax(last, dim=-1)[token])


@one_line_errors
@model_options
def sae_ablate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt.")],
    sae_path: SaeOpt,
    features: Annotated[str, typer.Option("--features", help="Features to ablate, e.g. 12,99.")],
    target: Annotated[str, typer.Option("--target", help="One token, e.g. ' Paris': its logit at the end.")],
    model: ModelOptions,
    positions: PositionsOpt = "all",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The target token's logit and probability at the last position, clean and with features ablated.

    The ablation zeroes the features and keeps the SAE's error term, so the site moves by minus each
    feature's activation times its decoder row. The table also gives each feature's clean activation at the
    last position.

    Example: mechscope sae ablate -m toy --sae saes/resid_post.2 --features 12,99 -p "The capital of France is"
    --target " Paris"
    """
    import torch

    import mechscope as ms

    where = _positions(positions)
    lm, sae = _load(model, sae_path, force)
    chosen = _parse_features(features, sae)
    token = lm.token_id(target)
    with lm.capture([sae.site]) as cache:
        clean_logit, clean_prob = _last(lm.forward(prompt), token)
    value = cache[sae.site]
    with torch.no_grad():  # the SAE's weights are parameters; reading features needs no graph
        acts = sae.encode(value.flatten(2) if value.dim() == 4 else value)[0, -1]
    with lm.intervene({sae.site: ms.ops.sae_edit(sae, ablate=chosen, positions=where)}):
        logit, prob = _last(lm.forward(prompt), token)
    result: dict[str, Any] = {
        "site": sae.site,
        "target": target,
        "token_id": token,
        "positions": where,
        "clean": {"logit": clean_logit, "prob": clean_prob},
        "ablated": {"logit": logit, "prob": prob},
        "features": [{"feature": f, "activation": float(acts[f])} for f in chosen],
    }
    if as_json:
        print_json(result)
        return
    rows = [[str(row["feature"]), f"{row['activation']:.4f}"] for row in result["features"]]
    print_table(f"features ablated at {sae.site} ({where} positions)", ["feature", "activation (last)"], rows)
    columns: list[str | Column] = ["run", Column("logit", justify="right"), Column("prob", justify="right")]
    runs = [["clean", f"{clean_logit:.4f}", f"{clean_prob:.4f}"], ["ablated", f"{logit:.4f}", f"{prob:.4f}"]]
    print_table(f"{visible(target)} at the last position", columns, runs)
    console.print(f"change: logit {logit - clean_logit:+.4f}, prob {prob - clean_prob:+.4f}", markup=False)


def _files(paths: list[Path], option: str) -> list[Path]:
    """The direction files named: each file, and each folder's ``*.safetensors`` (``circuit directions -o``)."""
    from mechscope.errors import InputError

    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(path.glob("*.safetensors"))
            if not inside:
                raise InputError(f"{option} folder '{path}' holds no .safetensors direction files")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"no {option} file at '{path}'; give a direction file (.safetensors) or its folder")
    return found


def _vectors(
    sae: SAE, directions: list[Path], probes: list[Path], lenses: list[Path], force: bool
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Name → vector and name → site of every saved vector named, each checked against the SAE's model."""
    from mechscope.concepts.lenses import load_lenses
    from mechscope.core.direction import Direction
    from mechscope.models.registry import check_provenance

    made_for = sae.config.model or ""
    vectors: dict[str, Tensor] = {}
    sites: dict[str, str] = {}

    def keep(name: str, vector: Tensor, site: str) -> None:
        unique, n = name, 2
        while unique in vectors:  # two files of one name in different folders
            unique, n = f"{name}#{n}", n + 1
        vectors[unique], sites[unique] = vector, site

    for kind, paths, option in (("direction", directions, "--directions"), ("probe", probes, "--probes")):
        for path in _files(paths, option):
            direction = Direction.load(path)
            check_provenance(direction.model, made_for, f"{kind} in '{path}'", force=force)
            keep(f"{kind}:{path.stem}", direction.vector, direction.site_name)
    for folder in lenses:
        lens = load_lenses(folder)
        check_provenance(lens.model, made_for, f"concept lenses in '{folder}'", force=force)
        for column, concept in enumerate(lens.concept_ids):
            keep(f"lens:{concept}", lens.W[:, column], lens.site)
    return vectors, sites


@one_line_errors
def sae_links(
    sae_path: SaeOpt,
    directions: Annotated[
        list[Path] | None, typer.Option("--directions", help="Direction files (.safetensors) or folders of them.")
    ] = None,
    probes: Annotated[
        list[Path] | None,
        typer.Option("--probes", help="Probe directions (circuit directions --method probe): files or folders."),
    ] = None,
    lenses: Annotated[list[Path] | None, typer.Option("--lenses", help="Concept lens folders (Lenses.save).")] = None,
    top: Annotated[int, typer.Option("--top", help="Features listed per vector.")] = 10,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The features whose decoder rows (and encoder columns) are nearest saved vectors, by |cosine|.

    Example: mechscope sae links --sae saes/resid_post.2 --directions dirs/ --lenses lenses/ --top 5
    """
    import mechscope.sae
    from mechscope.cli.inputs import at_least
    from mechscope.errors import InputError
    from mechscope.sae.links import feature_cosines

    at_least(top, 1, "--top")
    if not (directions or probes or lenses):
        raise InputError("give vectors to compare with: --directions, --probes or --lenses")
    sae = mechscope.sae.load(sae_path)
    vectors, sites = _vectors(sae, directions or [], probes or [], lenses or [], force)
    result = feature_cosines(sae, vectors, top=top, sites=sites)
    if as_json:
        print_json(result)
        return
    rows = []
    for links in result.vectors:
        elsewhere = " (not the SAE's site)" if links.site and links.site != result.site else ""
        for rank, (dec, enc) in enumerate(zip(links.decoder, links.encoder, strict=True)):
            head = [visible(links.name), f"{links.site or ''}{elsewhere}"] if rank == 0 else ["", ""]
            rows.append([*head, str(dec.feature), f"{dec.cosine:+.3f}", str(enc.feature), f"{enc.cosine:+.3f}"])
    columns: list[str | Column] = ["vector", "site", "decoder", Column("cos", justify="right")]
    columns += ["encoder", Column("cos", justify="right")]
    title = f"SAE features at {result.site} nearest each vector: decoder rows, encoder columns (|cosine|)"
    print_table(title, columns, rows)
