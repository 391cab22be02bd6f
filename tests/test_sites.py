"""Site strings: parsing, wildcards, and errors that name the valid range."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import mechscope as ms
from mechscope.core.sites import Site

Loader = Callable[..., ms.LanguageModel]


def test_wildcards_and_string_forms(load_tiny: Loader) -> None:
    lm = load_tiny("llama")
    n, heads = lm.arch.n_layers, lm.arch.n_heads
    assert [str(s) for s in lm.sites("resid_post.*")] == [f"resid_post.{i}" for i in range(n)]
    assert lm.sites("resid_post") == lm.sites("resid_post.*")
    assert [str(s) for s in lm.sites("head_out.1.*")] == [f"head_out.1.{h}" for h in range(heads)]
    assert str(lm.sites("resid_post.-1")[0]) == f"resid_post.{n - 1}"
    assert lm.sites(["embed", "embed"]) == [Site("embed")]
    assert str(Site("head_out", 8, 3)) == "head_out.8.3"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("resid_post.9", r"layer 9 is out of range for resid_post: the model has 2 layers \(0\.\.1"),
        ("head_out.0.7", r"head 7 is out of range .* 4 heads \(0\.\.3\)"),
        ("residual.0", "unknown site kind 'residual'.*known kinds: embed, resid_pre"),
        ("router_logits.0", "needs a mixture-of-experts model"),
        ("resid_post.0.1", "takes no head or expert index"),
        ("embed.0", "takes no layer"),
        ("resid post", "malformed site"),
    ],
)
def test_bad_sites_name_the_problem(load_tiny: Loader, pattern: str, message: str) -> None:
    lm = load_tiny("llama")
    with pytest.raises(ms.SiteError, match=message):
        lm.sites(pattern)


def test_moe_sites_expand_over_moe_layers_and_experts(load_tiny: Loader) -> None:
    lm = load_tiny("mixtral")
    assert lm.arch.moe_layers == (0, 1)
    experts = lm.sites("expert_out.1")  # the expert index is required, so this means every expert
    assert [str(s) for s in experts] == [f"expert_out.1.{e}" for e in range(lm.arch.n_experts)]
    with pytest.raises(ms.SiteError, match=r"expert 9 is out of range .* 4 experts"):
        lm.sites("expert_out.0.9")


def test_arch_dimensions(load_tiny: Loader) -> None:
    arch = load_tiny("qwen2_moe").arch
    assert (arch.n_layers, arch.n_heads, arch.n_kv_heads, arch.head_dim, arch.d_model) == (2, 4, 2, 16, 64)
    assert (arch.vocab, arch.n_experts, arch.top_k, arch.family) == (256, 4, 2, "qwen2_moe")
    assert load_tiny("gpt2").arch.summary()["n_experts"] == 0


def test_a_layerless_site_given_a_layer_is_refused(load_tiny: Loader) -> None:
    from mechscope.core.sites import Site, validate_site

    arch = load_tiny("gpt2").arch
    assert validate_site(Site("embed"), arch) == Site("embed")
    with pytest.raises(ms.SiteError, match="takes no layer"):
        validate_site(Site("embed", 5), arch)


@pytest.mark.parametrize("positions", [3.5, None, object()])
def test_positions_of_no_known_form_are_a_position_error(positions: object) -> None:
    from mechscope.core.positions import check_positions

    with pytest.raises(ms.PositionError, match="are not usable"):
        check_positions(positions)  # type: ignore[arg-type]
