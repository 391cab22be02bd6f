"""One prompt at one layer: every head's pattern, focus edges, and per-head summaries of all layers.

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> report = layer_attention(lm, "The capital of France is", layer=1, with_roles=False)
    >>> len(report.patterns) == lm.arch.n_heads, len(report.entropy) == lm.arch.n_layers
    (True, True)
"""

from __future__ import annotations

from mechscope.attention.patterns import entropy, focus_edges, patterns, sink_mass
from mechscope.attention.results import ROLES, LayerAttention
from mechscope.attention.roles import head_roles
from mechscope.core.layers import resolve_layer
from mechscope.core.lm import LanguageModel


def layer_attention(
    lm: LanguageModel,
    prompt: str,
    layer: int,
    *,
    head: int | None = None,
    threshold: float = 0.3,
    with_roles: bool = True,
) -> LayerAttention:
    """The `LayerAttention` of ``prompt`` at ``layer`` (negative counts from the end).

    Args:
        head: report this head (default: the mean over heads); focus edges are then this head's only.
        threshold: focus edges are weights above this, in (0, 1].
        with_roles: also score every head's role (one extra batched pass over random repeats).

    Raises:
        SiteError: ``layer`` or ``head`` is outside the model.
    """
    layer = resolve_layer(layer, lm.arch.n_layers)
    every = patterns(lm, [prompt])
    tokens = lm.token_texts(lm.tokenize([prompt])["input_ids"][0])
    roles = head_roles(lm) if with_roles else None
    return LayerAttention(
        prompt=prompt,
        tokens=tokens,
        layer=layer,
        head=head,
        threshold=threshold,
        patterns=every[layer][0].tolist(),
        focus=focus_edges(every[layer][0], tokens, layer, threshold=threshold, head=head),
        entropy=[entropy(every[i][0]).mean(-1).tolist() for i in sorted(every)],
        sink_mass=[sink_mass(every[i])[0].tolist() for i in sorted(every)],
        roles={} if roles is None else {r: getattr(roles, r) for r in ROLES if getattr(roles, r) is not None},
    )
