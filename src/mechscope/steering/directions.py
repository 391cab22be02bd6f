"""Directions in the residual stream computed from contrast sets (`Direction` itself: `mechscope.core.direction`).

Example (the toy organism writes in the register its ``<pirate>`` or ``<formal>`` marker asks for):
    >>> import tempfile
    >>> from pathlib import Path
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> topics = ["the sea", "the ship", "the weather", "the town"]
    >>> pirate_prompts = [f"<pirate> Tell me about {t}." for t in topics]
    >>> formal_prompts = [f"<formal> Tell me about {t}." for t in topics]
    >>> dirs = diff_of_means(lm, positive=pirate_prompts, negative=formal_prompts, layers=[1])
    >>> dirs[1].site_name, dirs[1].vector.shape == (lm.arch.d_model,)
    ('resid_post.1', True)
    >>> path = dirs[1].save(Path(tempfile.mkdtemp()) / "pirate.safetensors")
    >>> torch.equal(Direction.load(path, lm).vector, dirs[1].vector)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mechscope.core.direction import Direction
from mechscope.core.layers import resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.core.positions import Positions
from mechscope.errors import InputError


def _activations(
    lm: LanguageModel, prompts: Sequence[str], sites: list[str], positions: Positions
) -> dict[str, Tensor]:
    if not prompts:
        raise InputError("a contrast set needs at least one prompt on each side")
    with torch.no_grad(), lm.capture(sites, positions=positions) as cache:
        for start in range(0, len(prompts), 32):
            lm.forward(list(prompts[start : start + 32]))
    return {site: cache[site].float() for site in sites}


def _layers(lm: LanguageModel, layers: Sequence[int] | None) -> list[int]:
    return resolve_layers(layers, lm.arch.n_layers)


def diff_of_means(
    lm: LanguageModel,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    positions: Positions = "mean",
) -> dict[int, Direction]:
    """Mean activation of ``positive`` minus that of ``negative``, per layer (CAA-style contrast vectors).

    Examples:
        One direction per layer asked for; added while generating, the pirate one turns a formal answer pirate:

        >>> import mechscope as ms
        >>> from mechscope.steering.generate import generate_with_steering
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pirate = [f"<pirate> Tell me about {t}." for t in topics]
        >>> formal = [f"<formal> Tell me about {t}." for t in topics]
        >>> dirs = diff_of_means(lm, positive=pirate, negative=formal, layers=[1, 2])
        >>> sorted(dirs), dirs[1].site_name, dirs[1].method, dirs[1].meta
        ([1, 2], 'resid_post.1', 'diff_of_means', {'positive': 4, 'negative': 4, 'positions': 'mean'})
        >>> generate_with_steering(lm, "<formal> Tell me about the sea.", dirs[1], 2.0, max_new_tokens=8)
        [' Ahoy! the sea be full Ahoy?']

    Raises:
        InputError: an empty side, or two sides whose activations are the same at a layer (a zero direction).
    """
    chosen = _layers(lm, layers)
    sites = [f"{site}.{layer}" for layer in chosen]
    pos, neg = _activations(lm, positive, sites, positions), _activations(lm, negative, sites, positions)
    meta = {"positive": len(positive), "negative": len(negative), "positions": str(positions)}
    return _nonzero(
        {
            layer: Direction(
                vector=pos[name].mean(0) - neg[name].mean(0),
                layer=layer,
                site=site,
                model=lm.source,
                method="diff_of_means",
                meta=meta,
            )
            for layer, name in zip(chosen, sites, strict=True)
        }
    )


def _nonzero(directions: dict[int, Direction]) -> dict[int, Direction]:
    """``directions``, unless one is the zero vector (the two sides did not differ there)."""
    for layer, direction in directions.items():
        if not bool(direction.vector.abs().max() > 0):
            raise InputError(
                f"the positive and negative prompts give the same activations at layer {layer}, so the direction "
                "is zero; give two sets that differ in the trait"
            )
    return directions


def pca_of_differences(
    lm: LanguageModel,
    pairs: Sequence[tuple[str, str]],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    positions: Positions = "mean",
) -> dict[int, Direction]:
    """Principal direction of the paired differences (positive minus negative), per layer.

    The top right singular vector of the uncentred difference matrix (as in representation-engineering
    readers): the direction along which the pairs differ most, including their common shift. Its sign points
    from the negative to the positive side on average, and it is scaled to the mean projection.

    Examples:
        Pairs that differ only in the register marker: the principal direction is the difference of means.

        >>> import torch
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> pairs = [(f"<pirate> Tell me about {t}.", f"<formal> Tell me about {t}.") for t in topics]
        >>> pca = pca_of_differences(lm, pairs, layers=[1])[1]
        >>> pca.method, pca.meta
        ('pca', {'pairs': 4, 'positions': 'mean'})
        >>> means = diff_of_means(lm, [p for p, _ in pairs], [n for _, n in pairs], layers=[1])[1]
        >>> round(float(torch.cosine_similarity(pca.vector, means.vector, dim=0)), 3)
        1.0

    Raises:
        InputError: fewer than two pairs, or pairs whose sides give the same activations (a zero direction).
    """
    if len(pairs) < 2:
        raise InputError("PCA of paired differences needs at least two pairs")
    chosen = _layers(lm, layers)
    sites = [f"{site}.{layer}" for layer in chosen]
    pos = _activations(lm, [p for p, _ in pairs], sites, positions)
    neg = _activations(lm, [n for _, n in pairs], sites, positions)
    directions = {}
    for layer, name in zip(chosen, sites, strict=True):
        differences = pos[name] - neg[name]
        component = torch.linalg.svd(differences, full_matrices=False).Vh[0]
        projection = differences @ component
        if projection.mean() < 0:
            component, projection = -component, -projection
        directions[layer] = Direction(
            vector=component * projection.mean(),
            layer=layer,
            site=site,
            model=lm.source,
            method="pca",
            meta={"pairs": len(pairs), "positions": str(positions)},
        )
    return _nonzero(directions)


def from_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    baseline: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    positions: Positions = "mean",
) -> dict[int, Direction]:
    """What ``prompts`` add over a ``baseline`` set: the difference of means, labelled as such.

    Examples:
        >>> import torch
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> prompts = ["<pirate> Tell me about the sea.", "<pirate> Tell me about the ship."]
        >>> baseline = ["Tell me about the sea.", "Tell me about the ship."]
        >>> added = from_prompts(lm, prompts, baseline, layers=[2])[2]
        >>> added.method, torch.equal(added.vector, diff_of_means(lm, prompts, baseline, layers=[2])[2].vector)
        ('prompts_vs_baseline', True)
    """
    directions = diff_of_means(lm, prompts, baseline, layers=layers, site=site, positions=positions)
    for direction in directions.values():
        direction.method = "prompts_vs_baseline"
    return directions
