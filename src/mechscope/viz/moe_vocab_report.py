"""An HTML page of the experts' vocabulary contribution (`VocabContribution`): what each expert promotes.

One section per MoE layer: a summary table (tokens routed, agreement of the weights-only and corpus read-outs,
the other experts' baseline, top-k overlap, vector lengths), then per expert a table of its promoted and
suppressed tokens with their direct logits, from the weights and from the corpus side by side. Token strings
are user data: they are escaped everywhere (the chart kit's `table` escapes every cell), whitespace made
visible.

Examples:
    >>> from mechscope.moe.vocab_results import ExpertVocab, LayerVocab, VocabContribution, VocabReadout, VocabToken
    >>> token = VocabToken(token="<b>", token_id=3, logit=1.5)
    >>> row = ExpertVocab(expert=0, weights=VocabReadout(promoted=[token], suppressed=[token], norm=1.0))
    >>> result = VocabContribution(model="m", family="mixtral", top_k=1, input_scale="mlp_norm",
    ...     readout="W_U (γ ⊙ v)", prompts=0, tokens=0, layers=[LayerVocab(layer=0, experts=[row])])
    >>> page = render_vocab_html(result)
    >>> "&lt;b&gt;" in page and "<b>" not in page
    True
"""

from __future__ import annotations

from html import escape

from mechscope.moe.vocab_results import ExpertVocab, LayerVocab, VocabContribution, VocabReadout
from mechscope.text import show_whitespace
from mechscope.viz.charts import download_json, num, table
from mechscope.viz.page import render_page


def _cells(readout: VocabReadout | None, rank: int) -> list[str | float | int]:
    """``[promoted, logit, suppressed, logit]`` at ``rank`` (blank without a read-out)."""
    if readout is None:
        return ["—", "", "—", ""]
    up, down = readout.promoted[rank], readout.suppressed[rank]
    return [show_whitespace(up.token), up.logit, show_whitespace(down.token), down.logit]


def _expert_table(row: ExpertVocab, top_k: int) -> str:
    header = ["#", "promoted (weights)", "logit", "suppressed (weights)", "logit"]
    header += ["promoted (corpus)", "logit", "suppressed (corpus)", "logit"]
    rows = [[rank + 1, *_cells(row.weights, rank), *_cells(row.corpus, rank)] for rank in range(top_k)]
    return table(header, rows, css="vocab")


def _optional(value: float | int | None) -> str | float | int:
    return "—" if value is None else value


def _layer_body(layer: LayerVocab, top_k: int) -> str:
    summary: list[list[str | float | int]] = [
        [
            f"E{r.expert}",
            r.routed,
            _optional(r.agreement),
            _optional(r.others_agreement),
            _optional(r.overlap),
            r.weights.norm,
            _optional(None if r.corpus is None else r.corpus.norm),
        ]
        for r in layer.experts
    ]
    pair = layer.agreement()
    line = (
        ""
        if pair is None
        else f'<p class="legend">Mean agreement with the same expert {num(pair[0])}, with the other experts '
        f"{num(pair[1])}.</p>"
    )
    header = ["expert", "routed", "agreement", "others", f"overlap / {top_k}", "|u| weights", "|v| corpus"]
    parts = [line, table(header, summary, css="vocab-summary")]
    for row in layer.experts:
        parts.append(f"<h3>{escape(f'Expert {row.expert}')}</h3>{_expert_table(row, top_k)}")
    return "".join(parts)


def render_vocab_html(result: VocabContribution) -> str:
    """The vocabulary contribution as one HTML document (a string); opens offline."""
    corpus = (
        f"{result.tokens} tokens of {result.prompts} prompts"
        if result.prompts
        else "no corpus (weights-only read-outs only)"
    )
    intro = (
        f'<p class="legend">Each vector is read out as direct logits: {escape(result.readout)}. From the weights: '
        "the expert's expected output on Gaussian inputs at the pre-MLP norm's scale "
        f"({escape(result.input_scale)}). From the corpus ({escape(corpus)}): its mean router-weighted output over "
        "the tokens routed to it. Agreement is the Pearson correlation of the two read-outs over the vocabulary; "
        "others is the same for the other experts' corpus read-outs (the baseline); overlap counts shared "
        "promoted tokens.</p>"
    )
    return render_page(
        f"mechscope MoE vocabulary: {result.model}",
        model=result.model,
        shows=f"The top-{result.top_k} tokens each expert promotes and suppresses through the unembedding.",
        intro=intro,
        downloads=download_json(result.model_dump_json(), "moe-vocab.json", "result JSON"),
        sections=[(f"Layer {layer.layer}", _layer_body(layer, result.top_k)) for layer in result.layers],
    )
