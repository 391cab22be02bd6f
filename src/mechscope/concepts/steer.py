"""A concept's direction, to add while generating through the steering tools.

The direction of concept ``c`` at a layer is its mean activation minus the mean over every concept of the
encyclopedia (what is particular to ``c``), as a core `Direction`. Adding it at coefficient 1 moves an
average concept's mean onto ``c``'s. From a lens, the direction is the lens's weight vector, scaled to the
same length, so that coefficients mean the same for both.

Examples:
    >>> import tempfile, pathlib
    >>> import mechscope as ms
    >>> from mechscope.concepts.bootstrap import bootstrap
    >>> from mechscope.concepts.sources import toyworld_concepts
    >>> lm = ms.load("toy")
    >>> enc = bootstrap(lm, toyworld_concepts(), pathlib.Path(tempfile.mkdtemp()) / "e.h5", layers=[2], progress=False)
    >>> direction = concept_direction(enc, "toy:animal:cat", 2)
    >>> direction.site_name, direction.method, tuple(direction.vector.shape)
    ('resid_post.2', 'concept_mean', (128,))
"""

from __future__ import annotations

import numpy as np
import torch

from mechscope.concepts.encyclopedia import Encyclopedia
from mechscope.core.direction import Direction
from mechscope.errors import InputError


def concept_direction(
    encyclopedia: Encyclopedia, concept_id: str, layer: int, *, lens_weight: np.ndarray | None = None
) -> Direction:
    """The direction of ``concept_id`` at ``layer``: its mean minus the mean of all concepts' means.

    Args:
        lens_weight: a lens's ``[d]`` weight vector for the concept; the direction then points along it,
            with the length of the mean difference.

    Examples:
        >>> import pathlib, tempfile, numpy as np
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm = ms.load("toy")
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "e.h5"
        >>> enc = bootstrap(lm, toyworld_concepts(), path, layers=[2], progress=False)
        >>> mean = concept_direction(enc, "toy:animal:cat", 2)
        >>> mean.site_name, mean.method, mean.meta["term"], round(mean.vector.norm().item(), 1)
        ('resid_post.2', 'concept_mean', 'cat', 15.7)
        >>> lens = concept_direction(enc, "toy:animal:cat", 2, lens_weight=np.ones(128))  # along it, same length
        >>> lens.method, round(lens.vector.norm().item(), 1), bool((lens.vector > 0).all())
        ('concept_lens', 15.7, True)

    Raises:
        InputError: unknown concept, a layer that was not captured, or a lens weight of the wrong width.
    """
    k = encyclopedia.concepts.index(concept_id)
    absolute = encyclopedia.layer(layer)
    means = encyclopedia.mean(absolute).astype(np.float64)
    difference = means[k] - means.mean(axis=0)
    method = "concept_mean"
    if lens_weight is not None:
        weight = np.asarray(lens_weight, dtype=np.float64).reshape(-1)
        if weight.shape != difference.shape:
            raise InputError(f"the lens weight has width {weight.shape[0]}; the layer has {difference.shape[0]}")
        norm = np.linalg.norm(weight)
        if norm == 0:
            raise InputError(f"the lens of {concept_id} is all zeros; refit the lenses")
        difference = weight / norm * np.linalg.norm(difference)
        method = "concept_lens"
    concept = encyclopedia.concepts[k]
    return Direction(
        vector=torch.tensor(difference, dtype=torch.float32),
        layer=absolute,
        model=encyclopedia.info.model,
        method=method,
        meta={"concept": concept.id, "term": concept.term, "encyclopedia": str(encyclopedia.path)},
    )
