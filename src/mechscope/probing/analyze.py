"""Analyse a collected activation set layer by layer, turn its directions into steering directions, check them.

`analyze_layer` reads one layer of an `ActivationSet` and reports its geometry (`mechscope.probing.geometry`)
next to probes scored on held-out templates (`mechscope.probing.probe`). `layer_directions` extracts the
label's and each sub-label's direction (`mechscope.probing.directions`) and makes each a `Direction` scaled
to the separation of its two sides' means along it, so that coefficient 1 moves the negative side's mean to
the positive side's. `steering_check` adds one to prompts and reads a target token's probability.

>>> import tempfile
>>> import mechscope as ms
>>> from mechscope.probing.collect import collect
>>> from mechscope.probing.dataset import tool_prompt_dataset
>>> lm = ms.load("toy")
>>> acts = collect(lm, tool_prompt_dataset(per_tool=4), tempfile.mkdtemp(), progress=False)
>>> analysis = analyze_layer(acts, 2, permutations=2)
>>> analysis.site, analysis.geometry.classes, analysis.probe("label").majority
('resid_post.2', ['0', '1'], 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mechscope.errors import InputError
from mechscope.probing.analysis_results import LayerAnalysis, NamedProbe, SteeringCheck
from mechscope.probing.direction_results import DirectionMethod, ExtractedDirections
from mechscope.probing.directions import extract_directions
from mechscope.probing.geometry import geometry
from mechscope.probing.probe import probe
from mechscope.probing.store import ActivationSet

if TYPE_CHECKING:
    from mechscope.core.direction import Direction
    from mechscope.core.lm import LanguageModel


def analyze_layer(
    acts: ActivationSet,
    layer: int,
    *,
    permutations: int = 20,
    seed: int = 0,
    components: int = 10,
    projection: str = "pca",
) -> LayerAnalysis:
    """Geometry and probes of ``resid_post.{layer}`` (negative layers count from the end).

    Raises:
        InputError: the layer was not collected, or the labels have fewer than two classes.
    """
    site = acts.site(layer)
    x = acts.features(site)
    labels, subs, groups = np.asarray(acts.labels()), np.asarray(acts.sub_labels()), np.asarray(acts.groups())
    shape = geometry(x, labels, components=components, projection=projection, seed=seed)  # type: ignore[arg-type]
    number = int(site.rsplit(".", 1)[1])
    shape = shape.model_copy(update={"site": site, "layer": number})
    probes = [NamedProbe(target="label", score=probe(x, labels, groups, permutations=permutations, seed=seed))]
    if len(np.unique(labels)) == 2:
        score = probe(x, labels, groups, permutations=permutations, seed=seed, method="diff_means")
        probes.append(NamedProbe(target="label", score=score))
    inside = labels == labels.max()
    if len(np.unique(subs[inside])) >= 2:
        score = probe(x[inside], subs[inside], groups[inside], permutations=permutations, seed=seed)
        probes.append(NamedProbe(target="sub_label", score=score))
    return LayerAnalysis(
        site=site,
        layer=number,
        model=acts.manifest.model,
        dataset=acts.dataset.name,
        n=len(labels),
        geometry=shape,
        probes=probes,
    )


def _sides(labels: np.ndarray, subs: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "label":
        return labels == 1, labels == 0
    return (labels == 1) & (subs == name), (labels == 1) & (subs != name)


def layer_directions(
    acts: ActivationSet, layer: int, method: DirectionMethod = "diff_means", seed: int = 0
) -> tuple[ExtractedDirections, dict[str, Direction]]:
    """The label's and each sub-label's direction at ``layer``, scored, as `Direction` objects.

    Each vector is the method's unit vector times the projection of ``mean(positive) - mean(negative)`` on
    it: coefficient 1 moves the negative side's mean by the sides' separation along the direction.
    """
    import torch

    from mechscope.core.direction import Direction

    site = acts.site(layer)
    number = int(site.rsplit(".", 1)[1])
    x = acts.features(site)
    labels, subs = np.asarray(acts.labels()), np.asarray(acts.sub_labels())
    result, vectors = extract_directions(
        x, labels, subs, acts.groups(), method=method, seed=seed, sub_label_name="sub-label"
    )
    result = result.model_copy(update={"site": site, "layer": number})
    directions = {}
    for item in result.items:
        unit = vectors[item.name] / max(float(np.linalg.norm(vectors[item.name])), 1e-12)
        positive, negative = _sides(labels, subs, item.name)
        separation = float((x[positive].mean(0) - x[negative].mean(0)) @ unit)
        directions[item.name] = Direction(
            vector=torch.from_numpy((unit * separation).astype(np.float32)),
            layer=number,
            site=site.rsplit(".", 1)[0],
            model=acts.manifest.model,
            method=f"probing.{method}",
            meta={
                "positive": item.positive,
                "negative": item.negative,
                "auc": item.auc,
                "held_out": item.held_out,
                "dataset": acts.dataset.name,
                "dataset_digest": acts.manifest.dataset_digest,
            },
        )
    return result, directions


def steering_check(
    lm: LanguageModel,
    direction: Direction,
    prompts: Sequence[str],
    target: str,
    coefficients: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    name: str = "label",
) -> SteeringCheck:
    """The mean probability of ``target`` at each prompt's last position with ``coefficient x direction`` added.

    The direction is added at every position of the prompts (`mechscope.ops.add`).

    Raises:
        InputError: no prompts, or a target that is not one token.
    """
    import torch

    from mechscope.core import ops

    if not prompts:
        raise InputError("a steering check needs at least one prompt")
    direction.check(lm)
    token = lm.token_id(target)
    probabilities = []
    for coefficient in coefficients:
        with torch.no_grad(), lm.intervene({direction.site_name: ops.add(direction.vector, coefficient)}):
            logits = lm.forward(list(prompts))[:, -1].float()
        probabilities.append(float(logits.softmax(-1)[:, token].mean()))
    return SteeringCheck(
        site=direction.site,
        layer=direction.layer,
        direction=name,
        norm=float(direction.vector.norm()),
        target=target,
        coefficients=[float(c) for c in coefficients],
        probabilities=probabilities,
        prompts=len(prompts),
    )
