"""Small results built by hand that several report tests draw: a comparison and a head-ablation sweep."""

from __future__ import annotations

from mechscope.causal.results import AblationEffect, AblationResult
from mechscope.lens.results import Comparison, LayerComparison, TokenScore

PROMPT = "The capital of France is"


def head_sweep(prompt: str = PROMPT, metric: str = "p(␣Paris)") -> AblationResult:
    """A head sweep of 2 layers x 3 heads: head h drops the metric by 0.1 h (clean metric 0.5)."""
    effects = [
        AblationEffect(component="head", layer=layer, index=head, metric=0.5 - 0.1 * head, delta=-0.1 * head)
        for layer in range(2)
        for head in range(3)
    ]
    return AblationResult(
        prompt=prompt, component="head", method="zero", clean_metric=0.5, effects=effects, metric=metric
    )


def comparison(token: str = " the", prompt: str = PROMPT, token_level: bool = True) -> Comparison:
    """Three aligned layer pairs; the middle one differs and has no KL (the chart skips it)."""

    def score(text: str, prob: float) -> TokenScore:
        return TokenScore(token=text, token_id=0, prob=prob, logit=1.0)

    return Comparison(
        prompt=prompt,
        model_a="a",
        model_b="b",
        token_level=token_level,
        reason=None if token_level else "the models have different tokenizers",
        predicted_a=token,
        predicted_b=" Paris",
        layers=[
            LayerComparison(
                layer_a=0, layer_b=0, top_a=score(token, 0.2), top_b=score(token, 0.3), same_top=True, kl_a_to_b=0.5
            ),
            LayerComparison(
                layer_a=1, layer_b=2, top_a=score(" a", 0.4), top_b=score(token, 0.1), same_top=False, kl_a_to_b=None
            ),
            LayerComparison(
                layer_a=2,
                layer_b=4,
                top_a=score(" Paris", 0.9),
                top_b=score(" Paris", 0.8),
                same_top=True,
                kl_a_to_b=0.1 if token_level else None,
            ),
        ],
        first_divergence=1,
    )
