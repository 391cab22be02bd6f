"""The site vocabulary: named places in the forward pass that can be captured or intervened on.

A site is ``kind[.layer[.index]]`` — ``embed``, ``resid_post.12``, ``head_out.8.3``, ``expert_out.2.5``.
``*`` stands for every layer, head or expert (``resid_post.*``, ``head_out.3.*``); a kind with no layer
(``resid_post``) means every layer. Negative layers count from the end (``resid_post.-1``).

Axis names used in shapes throughout mechscope: ``batch`` prompts, ``pos`` token positions (query
positions for patterns), ``key`` key positions, ``d_model`` residual width, ``head`` attention heads,
``head_dim`` per-head width, ``expert`` routed experts, ``top_k`` experts chosen per token.

============== ======================================= =========================================
kind           what it is                              shape with positions="all"
============== ======================================= =========================================
embed          token embedding output                  [batch, pos, d_model]
resid_pre      input of layer L                        [batch, pos, d_model]
resid_post     output of layer L                       [batch, pos, d_model]
attn_out       attention contribution to the residual  [batch, pos, d_model]
mlp_out        MLP / MoE contribution to the residual  [batch, pos, d_model]
head_out       per-head input of the output projection [batch, pos, head_dim] (all heads: head axis)
attn_pattern   attention probabilities                 [batch, head, pos, key] (one head: no head)
router_logits  router scores before softmax            [batch, pos, expert]
expert_index   experts chosen per token                [batch, pos, top_k]
expert_weight  routing weights of the chosen experts   [batch, pos, top_k]
expert_out     one expert's output (zero where unused) [batch, pos, d_model]
============== ======================================= =========================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from mechscope.errors import SiteError
from mechscope.models.archmap import ModelMap

SubIndex = Literal["head", "expert"]


@dataclass(frozen=True)
class SiteKind:
    """What a site kind needs: a layer, a head/expert index, an MoE model; can it be written to.

    Examples:
        >>> SITE_KINDS["expert_out"]  # one expert's output: needs a layer, an expert index and an MoE model
        SiteKind(name='expert_out', layered=True, sub='expert', sub_required=True, moe=True, writable=True)
        >>> [kind.name for kind in SITE_KINDS.values() if not kind.writable]  # read-only: capture, never edit
        ['attn_pattern', 'router_logits', 'expert_index', 'expert_weight']
    """

    name: str
    layered: bool = True
    sub: SubIndex | None = None
    sub_required: bool = False
    moe: bool = False
    writable: bool = True


SITE_KINDS: dict[str, SiteKind] = {
    kind.name: kind
    for kind in (
        SiteKind("embed", layered=False),
        SiteKind("resid_pre"),
        SiteKind("resid_post"),
        SiteKind("attn_out"),
        SiteKind("mlp_out"),
        SiteKind("head_out", sub="head"),
        SiteKind("attn_pattern", sub="head", writable=False),
        SiteKind("router_logits", moe=True, writable=False),
        SiteKind("expert_index", moe=True, writable=False),
        SiteKind("expert_weight", moe=True, writable=False),
        SiteKind("expert_out", sub="expert", sub_required=True, moe=True),
    )
}

_SITE_RE = re.compile(r"^(?P<kind>[a-z_]+)(?:\.(?P<layer>-?\d+|\*))?(?:\.(?P<index>\d+|\*))?$")


@dataclass(frozen=True, order=True)
class Site:
    """One concrete site: a kind, a layer (None for ``embed``) and a head/expert index (or None)."""

    kind: str
    layer: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        parts = [self.kind]
        if self.layer is not None:
            parts.append(str(self.layer))
        if self.index is not None:
            parts.append(str(self.index))
        return ".".join(parts)

    @property
    def spec(self) -> SiteKind:
        """The `SiteKind` of this site."""
        return SITE_KINDS[self.kind]


def _known_kinds() -> str:
    return ", ".join(SITE_KINDS)


def expand_sites(patterns: str | Site | Iterable[str | Site], arch: ModelMap) -> list[Site]:
    """Parse site strings (with wildcards) into concrete, validated sites for ``arch``, in order.

    Examples:
        >>> import mechscope as ms
        >>> arch = ms.load("toy").arch  # llama, 4 layers of 4 heads
        >>> [str(site) for site in expand_sites(["embed", "resid_post.-1", "head_out.0.*"], arch)]
        ['embed', 'resid_post.3', 'head_out.0.0', 'head_out.0.1', 'head_out.0.2', 'head_out.0.3']
        >>> [str(site) for site in expand_sites("expert_out.1", ms.load("toy-moe").arch)]  # every expert
        ['expert_out.1.0', 'expert_out.1.1', 'expert_out.1.2', 'expert_out.1.3']
        >>> expand_sites("router_logits.0", arch)
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: site 'router_logits.0' needs a mixture-of-experts model; llama has no router

    Raises:
        SiteError: an unknown kind, a malformed string, or a layer / head / expert out of range; the
            message names the valid range.
    """
    if isinstance(patterns, str | Site):
        patterns = [patterns]
    sites: list[Site] = []
    for pattern in patterns:
        for site in [pattern] if isinstance(pattern, Site) else _expand_one(pattern, arch):
            checked = validate_site(site, arch)
            if checked not in sites:
                sites.append(checked)
    if not sites:
        raise SiteError("no sites given; name at least one, e.g. resid_post.0")
    return sites


def _expand_one(text: str, arch: ModelMap) -> list[Site]:
    match = _SITE_RE.match(text.strip())
    if match is None:
        raise SiteError(f"malformed site '{text}'; write kind[.layer[.index]], e.g. resid_post.3 or head_out.2.1")
    kind_name, layer_text, index_text = match.group("kind", "layer", "index")
    kind = SITE_KINDS.get(kind_name)
    if kind is None:
        raise SiteError(f"unknown site kind '{kind_name}' in '{text}'; known kinds: {_known_kinds()}")
    if kind.moe and not arch.is_moe:
        raise SiteError(f"site '{text}' needs a mixture-of-experts model; {arch.family} has no router")
    if not kind.layered:
        if layer_text is not None:
            raise SiteError(f"site '{kind_name}' takes no layer (got '{text}')")
        return [Site(kind_name)]
    if index_text is not None and kind.sub is None:
        raise SiteError(f"site '{kind_name}' takes no head or expert index (got '{text}')")
    layers = _layers_for(kind, arch) if layer_text in (None, "*") else [int(layer_text)]
    if index_text == "*" or (index_text is None and kind.sub_required):
        indices: list[int | None] = list(range(_sub_count(kind, arch)))
    else:
        indices = [None if index_text is None else int(index_text)]
    return [Site(kind_name, layer, index) for layer in layers for index in indices]


def _layers_for(kind: SiteKind, arch: ModelMap) -> list[int]:
    return list(arch.moe_layers) if kind.moe else list(range(arch.n_layers))


def _sub_count(kind: SiteKind, arch: ModelMap) -> int:
    return arch.n_heads if kind.sub == "head" else arch.n_experts


def validate_site(site: Site, arch: ModelMap) -> Site:
    """Check ``site`` against ``arch`` and return it with a non-negative layer.

    Examples:
        >>> import mechscope as ms
        >>> arch = ms.load("toy").arch
        >>> validate_site(Site("head_out", -1, 2), arch)
        Site(kind='head_out', layer=3, index=2)
        >>> validate_site(Site("head_out", 0, 4), arch)
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: head 4 is out of range for head_out.0: the model has 4 heads (0..3)

    Raises:
        SiteError: the layer, head or expert is out of range, or the layer has no router.
    """
    kind = SITE_KINDS.get(site.kind)
    if kind is None:
        raise SiteError(f"unknown site kind '{site.kind}'; known kinds: {_known_kinds()}")
    if not kind.layered:
        if site.layer is not None or site.index is not None:
            raise SiteError(f"site '{site.kind}' takes no layer or index; write it as '{site.kind}'")
        return site
    if site.layer is None:
        raise SiteError(f"site '{site.kind}' needs a layer, e.g. {site.kind}.0")
    layer = site.layer + arch.n_layers if site.layer < 0 else site.layer
    if not 0 <= layer < arch.n_layers:
        raise SiteError(
            f"layer {site.layer} is out of range for {site.kind}: the model has {arch.n_layers} layers "
            f"(0..{arch.n_layers - 1}, or -{arch.n_layers}..-1 from the end)"
        )
    if kind.moe and layer not in arch.moe_layers:
        raise SiteError(f"layer {layer} has no router; {site.kind} exists on layers {list(arch.moe_layers)}")
    if site.index is not None:
        count = _sub_count(kind, arch)
        if not 0 <= site.index < count:
            raise SiteError(
                f"{kind.sub} {site.index} is out of range for {site.kind}.{layer}: "
                f"the model has {count} {kind.sub}s (0..{count - 1})"
            )
    elif kind.sub_required:
        raise SiteError(f"site '{site.kind}' needs a {kind.sub} index, e.g. {site.kind}.{layer}.0")
    return Site(site.kind, layer, site.index)


def parse_site(text: str, arch: ModelMap) -> Site:
    """Parse exactly one concrete site (no wildcards).

    Examples:
        >>> import mechscope as ms
        >>> arch = ms.load("toy").arch
        >>> parse_site("attn_out.-2", arch)
        Site(kind='attn_out', layer=2, index=None)
        >>> parse_site("resid_post.*", arch)
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: 'resid_post.*' names 4 sites; name exactly one here

    Raises:
        SiteError: the string is malformed, names several sites, or is out of range.
    """
    sites = expand_sites([text], arch)
    if len(sites) != 1:
        raise SiteError(f"'{text}' names {len(sites)} sites; name exactly one here")
    return sites[0]
