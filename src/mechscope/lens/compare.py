"""Compare two models' layer-by-layer predictions on the same prompt (e.g. a base and a fine-tuned model).

Layers are aligned by relative depth (layer ``i`` of ``n`` with the layer at the same fraction of the
other model), which is layer by layer when the depths match. Token-level comparison needs both models to
tokenize the prompt identically and share a vocabulary; otherwise the comparison says why and reports only
each model's own top tokens.
"""

from __future__ import annotations

import torch

from mechscope.core.lm import LanguageModel
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import Comparison, LayerComparison


def token_level_reason(a: LanguageModel, b: LanguageModel, prompt: str) -> str | None:
    """Why two models cannot be compared token by token on ``prompt`` (None when they can).

    Examples:
        >>> import mechscope as ms
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> toy = ms.load("toy")
        >>> print(token_level_reason(toy, ms.load("toy-moe"), "The capital of France is"))  # one tokenizer
        None
        >>> tokenizer = AutoTokenizer.from_pretrained(toy.source)
        >>> tokenizer.add_tokens([" Lutetia"])  # a fine-tune that grew its vocabulary by one word
        1
        >>> model = AutoModelForCausalLM.from_pretrained(toy.source)
        >>> _ = model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        >>> grown = ms.wrap(model, tokenizer)
        >>> token_level_reason(toy, grown, "The capital of France is")
        'the two tokenizers have different vocabularies'
        >>> token_level_reason(toy, grown, "The capital of France is Lutetia")
        'the two tokenizers split the prompt differently'
    """
    ids_a = a.tokenize([prompt])["input_ids"][0].tolist()
    ids_b = b.tokenize([prompt])["input_ids"][0].tolist()
    if ids_a != ids_b:
        return "the two tokenizers split the prompt differently"
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        return "the two tokenizers have different vocabularies"
    if a.arch.vocab != b.arch.vocab:
        return f"the unembeddings differ in size ({a.arch.vocab} vs {b.arch.vocab})"
    return None


def compare(a: LanguageModel, b: LanguageModel, prompt: str, *, position: int = -1) -> Comparison:
    """Both models' logit lens on ``prompt`` at ``position``, aligned by relative depth.

    Examples:
        >>> import mechscope as ms
        >>> result = compare(ms.load("toy"), ms.load("toy-moe"), "The capital of France is")
        >>> result.token_level, result.predicted_a, result.predicted_b
        (True, ' Paris', ' Paris')
        >>> [(row.layer_a, row.layer_b, row.top_a.token, row.top_b.token) for row in result.layers]
        [(0, 0, ' blue', ' Algiers'), (1, 1, ' a', ' Santiago'), (2, 2, ' late', ' Paris'), (3, 3, ' Paris', ' Paris')]
        >>> result.first_divergence, round(result.layers[-1].kl_a_to_b, 2)  # they agree only at the last layer
        (0, 0.04)
    """
    lens_a, lens_b = LogitLens(a), LogitLens(b)
    logits_a, final_a = lens_a.layer_logits([prompt], position=position)
    logits_b, final_b = lens_b.layer_logits([prompt], position=position)
    reason = token_level_reason(a, b, prompt)
    n_a, n_b = a.arch.n_layers, b.arch.n_layers
    rows = []
    for layer_a in range(n_a):
        layer_b = round(layer_a * (n_b - 1) / max(1, n_a - 1))
        read_a, read_b = logits_a[layer_a, 0], logits_b[layer_b, 0]
        probs_a, probs_b = read_a.softmax(-1), read_b.softmax(-1)
        top_a = lens_a.score(read_a, probs_a, int(read_a.argmax()))
        top_b = lens_b.score(read_b, probs_b, int(read_b.argmax()))
        kl = None
        if reason is None:
            log_a, log_b = read_a.log_softmax(-1), read_b.log_softmax(-1)
            kl = float((log_a.exp() * (log_a - log_b)).sum())
        same = reason is None and top_a.token_id == top_b.token_id
        rows.append(
            LayerComparison(layer_a=layer_a, layer_b=layer_b, top_a=top_a, top_b=top_b, same_top=same, kl_a_to_b=kl)
        )
    first = next((row.layer_a for row in rows if not row.same_top), None) if reason is None else None
    return Comparison(
        prompt=prompt,
        model_a=a.source,
        model_b=b.source,
        token_level=reason is None,
        reason=reason,
        predicted_a=lens_a.decode(int(torch.argmax(final_a[0]))),
        predicted_b=lens_b.decode(int(torch.argmax(final_b[0]))),
        layers=rows,
        first_divergence=first,
    )
