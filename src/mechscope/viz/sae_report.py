"""Self-contained HTML pages of SAE features: a prompt read token by token, max-activating contexts, logit effects.

`render_features_html` shows a prompt's tokens coloured by one feature's activation (white 0 .. dark blue at
the feature's largest activation on the prompt; a legend states the range) with each token's top features in a
table; `render_examples_html` shows each feature's max-activating contexts, every token coloured by the
feature's activation on one scale per feature and the activating token outlined. Logit effects (the tokens a
feature's decoder row promotes and suppresses) go in tables beside them.

Nothing comes from the network. Token strings are user data and go through ``html.escape`` everywhere, in text
and in attributes (hover titles); whitespace is made visible (``␣``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from mechscope.viz.charts import download_json, legend, num, table, visible
from mechscope.viz.colors import Scale, ink
from mechscope.viz.page import render_page

if TYPE_CHECKING:
    # Only for annotations: importing mechscope.sae runs its package __init__, which imports torch, and the
    # reports must import without torch.
    from mechscope.sae.results import LogitEffect, PromptFeatures, TopExamples

#: The outline of the token an example is about.
CENTER = "outline:2px solid #d62728;outline-offset:-1px"


def activation_scale(values: Sequence[float], feature: int) -> Scale:
    """The sequential scale 0 .. the largest of ``values`` (at least a small positive number) for ``feature``."""
    return Scale(f"activation of feature {feature}", 0.0, max([*values, 0.0]) or 1.0)


def _token(text: str, value: float, scale: Scale, *, title: str, center: bool = False) -> str:
    """One token as a coloured span: background by ``value`` on ``scale``, ``title`` on hover (escaped)."""
    background = scale.colour(max(value, 0.0))
    outline = f";{CENTER}" if center else ""
    return (
        f'<span class="tok" title="{escape(title, quote=True)}" data-activation="{num(value)}" '
        f'style="background:{background};color:{ink(background)}{outline}">{visible(text)}</span>'
    )


def _tokens_line(tokens: Sequence[str], values: Sequence[float], scale: Scale, center: int | None = None) -> str:
    spans = [
        _token(text, value, scale, title=f"{text!r}: {value:.4f}", center=i == center)
        for i, (text, value) in enumerate(zip(tokens, values, strict=True))
    ]
    return f'<p class="tokens">{"".join(spans)}</p>'


def _logit_tables(effect: LogitEffect) -> str:
    """The promoted and suppressed tokens of one feature, side by side."""
    rows: list[list[str | float | int]] = []
    for i in range(max(len(effect.positive), len(effect.negative))):
        up = effect.positive[i] if i < len(effect.positive) else None
        down = effect.negative[i] if i < len(effect.negative) else None
        rows.append(
            [
                "" if up is None else up.token.replace(" ", "␣"),
                "" if up is None else up.effect,
                "" if down is None else down.token.replace(" ", "␣"),
                "" if down is None else down.effect,
            ]
        )
    note = (
        '<p class="legend">Direct effect on each token\'s logit of one unit of the feature: '
        "W_U @ W_dec[feature], with the raw unembedding (no final norm).</p>"
    )
    return note + table(["promoted", "effect", "suppressed", "effect"], rows, css=f"logits feature-{effect.feature}")


def render_features_html(
    result: PromptFeatures, *, feature: int | None = None, logits: LogitEffect | None = None, model: str = ""
) -> str:
    """One prompt's SAE features as an HTML document (a string): write it anywhere and open it offline.

    Args:
        result: the prompt read by `mechscope.sae.read.top_features`.
        feature: colour the tokens by this feature's activation (it must be among ``result.traces``);
            default: the first trace, if any.
        logits: the feature's logit effects, shown in a table.
        model: the model's name, for the header.

    Raises:
        KeyError: ``feature`` was not traced in ``result``.
    """
    tokens = [t.token for t in result.tokens]
    sections: list[tuple[str, str]] = []
    trace = result.trace(feature) if feature is not None else (result.traces[0] if result.traces else None)
    if trace is not None:
        scale = activation_scale(trace.activations, trace.feature)
        body = legend(scale) + _tokens_line(tokens, trace.activations, scale)
        sections.append((f"Feature {trace.feature} on the prompt", body))
    rows: list[list[str | float | int]] = [
        [
            t.position,
            t.token.replace(" ", "␣"),
            ", ".join(f"{f.feature} ({f.activation:.3g})" for f in t.top) or "none active",
        ]
        for t in result.tokens
    ]
    sections.append(("Top features per token", table(["position", "token", "features (activation)"], rows, css="top")))
    if logits is not None:
        sections.append((f"Logit effect of feature {logits.feature}", _logit_tables(logits)))
    title = f"mechscope SAE features: {model}" if model else "mechscope SAE features"
    intro = f'<p>Prompt: <span class="tok" id="prompt">{escape(result.prompt)}</span></p>'
    return render_page(
        title,
        model=model,
        shows=f"Which features of the SAE at {result.site} ({result.d_sae} features) are active at each token.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "sae-features.json", "result JSON"),
        sections=sections,
    )


def render_examples_html(result: TopExamples, *, logits: Sequence[LogitEffect] = (), model: str = "") -> str:
    """Each feature's max-activating contexts as an HTML document (a string), with its logit effects if given.

    Each context is coloured by the feature's activation on one scale per feature (0 .. its top example's
    activation); the token the example is about is outlined.
    """
    by_feature = {effect.feature: effect for effect in logits}
    sections = []
    for entry in result.features:
        if entry.examples:
            scale = activation_scale([e.activation for e in entry.examples], entry.feature)
            lines = "".join(
                f'<div class="example" data-prompt="{e.prompt}" data-position="{e.position}">'
                f'<span class="where">prompt {e.prompt}, position {e.position}: {num(e.activation)}</span>'
                f"{_tokens_line(e.tokens, e.activations, scale, e.center)}</div>"
                for e in entry.examples
            )
            body = legend(scale) + lines
        else:
            body = "<p>Never active on this corpus.</p>"
        counts = f'<p class="legend">Active on {entry.active_tokens} of {result.tokens} tokens searched.</p>'
        effect = by_feature.get(entry.feature)
        extra = _logit_tables(effect) if effect is not None else ""
        sections.append((f"Feature {entry.feature}", counts + body + extra))
    title = f"mechscope SAE top examples: {model}" if model else "mechscope SAE top examples"
    first = "each prompt's first token left out" if result.skip_first else "every token searched"
    shows = (
        f"The {result.k} contexts of {result.prompts} prompts where each feature of the SAE at {result.site} is "
        f"most active ({first}; up to {result.context} tokens either side)."
    )
    return render_page(
        title,
        model=model,
        shows=shows,
        downloads=download_json(result.model_dump_json(), "sae-top-examples.json", "result JSON"),
        sections=sections,
    )


__all__ = ["activation_scale", "render_examples_html", "render_features_html"]
