"""Reading SAE features: which fire on a prompt, where they fire most in a corpus, and what they write.

* `encode` gives a batch's feature activations ``[batch, pos, d_sae]``, aligned with ``lm.forward``'s logits
  (left padding for decoders; padded positions are zero).
* `top_features` lists each token's most active features, and traces chosen features over the prompt.
* `top_examples` streams a corpus and keeps, per feature, the ``k`` contexts where it is most active, in a
  bounded heap (memory: ``k`` contexts per feature, plus one batch). Ties are broken by prompt index, then
  position, so the answer never depends on how the prompts were batched. Each prompt's first token (BOS on
  most models, whose outlier norm many features fire on) is left out unless ``skip_first=False``.
* `logit_effect` reads a feature's decoder row through the unembedding: ``W_U @ W_dec[f]``, with the raw
  ``W_U`` (the LM head's weight), *without* the final norm. This is the convention of SAELens and
  Neuronpedia's "logit effects"; the final norm would only rescale the row per token (RMSNorm's ``1/rms``,
  a positive factor that keeps the ranking) and by its elementwise weight, which this leaves out
  (TransformerLens's ``fold_ln`` folds that weight into ``W_U``; on models whose norm weight is far from
  uniform the rankings can differ).

Examples:
    >>> import mechscope as ms
    >>> lm = ms.load("toy")
    >>> sae = ms.sae.SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8)
    >>> tuple(encode(lm, sae, ["The capital of France is", "Hi"]).shape)
    (2, 7, 256)
    >>> read = top_features(lm, sae, "The capital of France is", top=3)
    >>> [len(t.top) for t in read.tokens]
    [3, 3, 3, 3, 3, 3, 3]
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from mechscope.core.batching import plan_batches
from mechscope.core.bulk import check_prompts, token_ids
from mechscope.core.lm import Inputs, LanguageModel
from mechscope.errors import InputError
from mechscope.progress import track
from mechscope.sae.formats import check_fits
from mechscope.sae.model import SAE
from mechscope.sae.results import (
    Example,
    FeatureActivation,
    FeatureExamples,
    FeatureTrace,
    LogitEffect,
    PromptFeatures,
    TokenEffect,
    TokenFeatures,
    TopExamples,
)

# --- shared by reading and evaluation -------------------------------------------------------------------------


def check_sae(lm: LanguageModel, sae: SAE) -> None:
    """Refuse an SAE whose site ``lm`` lacks or whose width is not the site's (provenance is `load`'s job).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> check_sae(lm, SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8))  # fits: no error
        >>> check_sae(lm, SAE.random(lm.arch.d_model, 256, "resid_post.9", k=8))
        Traceback (most recent call last):
        ...
        mechscope.errors.SiteError: the SAE reads resid_post.9, which ... lacks: layer 9 is out of range ...

    Raises:
        SiteError: the site does not exist on ``lm``.
        InputError: the SAE's ``d_in`` is not the site's width.
    """
    check_fits(sae, lm, force=True)  # force: a provenance mismatch was already refused (or allowed) at load


def check_features(sae: SAE, features: Sequence[int]) -> list[int]:
    """``features`` as ints, each checked against the SAE.

    Examples:
        >>> sae = SAE.random(16, 64, "resid_post.2", k=4)
        >>> check_features(sae, [3, torch.tensor(5)])
        [3, 5]
        >>> check_features(sae, [64])
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: feature 64 is out of range; this SAE has features 0..63

    Raises:
        InputError: a feature outside ``0 .. d_sae - 1``.
    """
    chosen = [int(f) for f in features]
    for feature in chosen:
        if not 0 <= feature < sae.d_sae:
            raise InputError(f"feature {feature} is out of range; this SAE has features 0..{sae.d_sae - 1}")
    return chosen


def evaluated(mask: Tensor, skip_first: bool) -> Tensor:
    """``[batch, pos]`` bool: the real tokens, less each prompt's first when ``skip_first``.

    ``mask`` is the attention mask of the whole sequence (padding 0); a prompt's own position is the count of
    real tokens before it, so this holds for left and right padding alike.

    Examples:
        >>> mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # left padding: the first prompt has two tokens
        >>> evaluated(mask, skip_first=True).int().tolist()
        [[0, 0, 0, 1], [0, 1, 1, 1]]
        >>> evaluated(mask, skip_first=False).int().tolist()
        [[0, 0, 1, 1], [1, 1, 1, 1]]
    """
    real = mask.bool()
    own = mask.long().cumsum(dim=1) - 1
    return real & (own >= 1) if skip_first else real


def own_positions(mask: Tensor) -> Tensor:
    """``[batch, pos]``: each column's position in its prompt's own coordinates (padding: -1 or repeats)."""
    return mask.long().cumsum(dim=1) - 1


def flat_site(value: Tensor) -> Tensor:
    """A captured site value as the SAE reads it: ``head_out`` ``[batch, pos, head, head_dim]`` flattened."""
    return value.flatten(2) if value.dim() == 4 else value


def token_batches(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_tokens: int | None = None,
    progress: bool = False,
    what: str = "reading",
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """The prompts tokenized once and run in length-bucketed batches: ``(prompt indices, model inputs)``.

    Batches are planned as `LanguageModel.forward_batches` plans them (`mechscope.core.batching`): at most
    ``batch_size`` prompts and ``max_tokens`` padded tokens each. Only one batch's inputs exist at a time.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> for batch, inputs in token_batches(lm, ["a b c", "Hello there", "x"], batch_size=2):
        ...     print(batch, inputs["attention_mask"].tolist())  # the two short prompts go together, left-padded
        [2, 0] [[0, 0, 1, 1], [1, 1, 1, 1]]
        [1] [[1, 1, 1, 1, 1, 1]]

    Raises:
        InputError: no prompts, an empty prompt, one longer than the model's context, or a bad size.
    """
    if isinstance(prompts, str):
        raise InputError("give a list of prompts (one string per prompt), not a single string")
    ids = token_ids(lm, check_prompts(prompts))
    plan = plan_batches([len(row) for row in ids], batch_size, max_tokens=max_tokens)
    batches = [batch for window in plan for batch in window]
    for batch in track(batches, what, enabled=progress):
        padded = lm.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt")
        yield batch, lm.encode({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})


def _site_value(lm: LanguageModel, sae: SAE, inputs: Inputs) -> tuple[Tensor, Tensor]:
    """The site's value (flattened as the SAE reads it) of one forward pass, and that pass's logits."""
    with lm.capture([sae.site]) as cache:
        logits = lm.forward(inputs)
    return flat_site(cache[sae.site]), logits


# --- features of prompts ----------------------------------------------------------------------------------


def encode(lm: LanguageModel, sae: SAE, prompts: str | Sequence[str]) -> Tensor:
    """The SAE's feature activations on a batch of prompts: ``[batch, pos, d_sae]`` float32.

    Positions are ``lm.forward``'s columns (decoders pad on the left); padded columns are zero. For the
    mask, use ``lm.encode(prompts)["attention_mask"]``; for a corpus too large for one batch, use
    `top_examples` or `mechscope.sae.evaluate.evaluate`, which stream.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> features = encode(lm, sae, ["The capital of France is", "Hi"])
        >>> tuple(features.shape)
        (2, 7, 256)
        >>> (features > 0).sum(-1).tolist()  # k=8 active per real token; "Hi" is left-padded, its padding zero
        [[8, 8, 8, 8, 8, 8, 8], [0, 0, 0, 0, 8, 8, 8]]

    Raises:
        InputError: no prompts, an empty prompt, or an SAE whose width is not its site's.
        SiteError: the SAE's site does not exist on ``lm``.
    """
    check_sae(lm, sae)
    inputs = lm.encode(prompts)
    value, _ = _site_value(lm, sae, inputs)
    with torch.no_grad():  # the SAE's weights are parameters; reading needs no graph
        features = sae.encode(value).float()
    mask = inputs.get("attention_mask")
    if mask is not None:
        features = features * mask.to(features.device).unsqueeze(-1).to(features.dtype)
    return features


def top_features(
    lm: LanguageModel, sae: SAE, prompt: str, *, top: int = 10, features: Sequence[int] = ()
) -> PromptFeatures:
    """Each token's ``top`` most active features (active: ``> 0``), and the traces of ``features``.

    Every token is listed, the first (BOS) too; ties in activation are broken by the lower feature index.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> read = top_features(lm, sae, "The capital of France is", top=2, features=[3])
        >>> [(t.token, [f.feature for f in t.top]) for t in read.tokens[:3]]
        [('<bos>', [98, 174]), ('The', [22, 67]), (' capital', [42, 228])]
        >>> [round(a, 2) for a in read.trace(3).activations]  # feature 3 at every token
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.65]

    Raises:
        InputError: an empty prompt, ``top`` below 1, a feature outside the SAE, or a mismatched SAE.
        SiteError: the SAE's site does not exist on ``lm``.
    """
    if not isinstance(prompt, str):
        raise InputError("top_features reads one prompt; give a string")
    if top < 1:
        raise InputError(f"top must be at least 1, got {top}")
    traced = check_features(sae, features)
    acts = encode(lm, sae, [prompt])[0].cpu()  # one prompt: no padding
    ids = lm.encode([prompt])["input_ids"][0].tolist()
    texts = lm.token_texts(ids)
    rows = []
    for position, (token, token_id) in enumerate(zip(texts, ids, strict=True)):
        # a stable sort on the negated values: ties keep the lower index first
        order = torch.sort(-acts[position], stable=True).indices[:top]
        chosen = [FeatureActivation(feature=int(f), activation=float(acts[position, f])) for f in order]
        rows.append(
            TokenFeatures(
                position=position, token=token, token_id=token_id, top=[c for c in chosen if c.activation > 0]
            )
        )
    traces = [FeatureTrace(feature=f, activations=acts[:, f].tolist()) for f in dict.fromkeys(traced)]
    return PromptFeatures(site=sae.site, prompt=prompt, d_sae=sae.d_sae, tokens=rows, traces=traces)


# --- max-activating contexts ----------------------------------------------------------------------------------

#: A kept context: (−activation, prompt, position, token ids, activations, center). The first three order it.
_Kept = tuple[float, int, int, tuple[int, ...], tuple[float, ...], int]


def top_examples(
    lm: LanguageModel,
    sae: SAE,
    prompts: Sequence[str],
    features: Sequence[int],
    *,
    k: int = 20,
    context: int = 8,
    batch_size: int = 32,
    max_tokens: int | None = None,
    skip_first: bool = True,
    progress: bool = False,
) -> TopExamples:
    """The ``k`` contexts over ``prompts`` where each of ``features`` is most active, streaming.

    Args:
        lm: the model.
        sae: the SAE.
        prompts: the corpus, one string per prompt.
        features: the features to search for.
        k: contexts kept per feature (only tokens where the feature is active, ``> 0``).
        context: tokens shown either side of the activating token, at most.
        batch_size: prompts per forward pass.
        max_tokens: padded tokens per forward pass at most.
        skip_first: leave each prompt's first token (BOS) out of the search.
        progress: show a progress bar on stderr.

    Returns:
        Per feature, its contexts from the highest activation down; ties by prompt index, then position.

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> corpus = ["The capital of France is Paris.", "Two plus two is four."]
        >>> found = top_examples(lm, sae, corpus, [0, 5], k=2, context=2)
        >>> [(f.feature, f.active_tokens) for f in found.features]  # feature 5 never fires on this corpus
        [(0, 2), (5, 0)]
        >>> [(e.prompt, e.position, e.tokens, e.center) for e in found.features[0].examples]
        [(1, 1, ['<bos>', 'T', 'w', 'o'], 1), (1, 12, [' is', ' f', 'our', '.'], 2)]

    Raises:
        InputError: an empty corpus or prompt, no features, a feature outside the SAE, ``k`` below 1 or a
            negative ``context``, or a mismatched SAE.
        SiteError: the SAE's site does not exist on ``lm``.
    """
    chosen = list(dict.fromkeys(check_features(sae, features)))
    if not chosen:
        raise InputError("no features to search; give at least one feature index")
    if k < 1 or context < 0:
        raise InputError(f"k must be at least 1 and context at least 0, got k={k}, context={context}")
    check_sae(lm, sae)
    kept: list[list[_Kept]] = [[] for _ in chosen]
    active = [0] * len(chosen)
    searched = 0
    index = torch.tensor(chosen)
    for batch, inputs in token_batches(lm, prompts, batch_size=batch_size, max_tokens=max_tokens, progress=progress):
        value, _ = _site_value(lm, sae, inputs)
        with torch.no_grad():
            acts = sae.encode(value)[..., index.to(value.device)].float().cpu()  # [b, pos, F]
        mask = inputs["attention_mask"].cpu()
        where = evaluated(mask, skip_first)
        searched += int(where.sum())
        ids, own, lengths = inputs["input_ids"].cpu(), own_positions(mask), mask.sum(dim=1)
        for j in range(len(chosen)):
            column = acts[..., j].masked_fill(~where, 0.0)
            active[j] += int((column > 0).sum())
            found = _candidates(column, k)
            fresh = [_context(ids, acts[..., j], own, lengths, batch, int(r), int(c), context) for r, c in found]
            kept[j] = heapq.nsmallest(k, kept[j] + fresh, key=lambda entry: entry[:3])
    return TopExamples(
        site=sae.site,
        prompts=len(prompts),
        tokens=searched,
        k=k,
        context=context,
        skip_first=skip_first,
        features=[_examples(lm, f, n, entries) for f, n, entries in zip(chosen, active, kept, strict=True)],
    )


def _candidates(column: Tensor, k: int) -> list[tuple[int, int]]:
    """The (row, column) of every active token that could enter a top ``k``: all ties at the ``k``-th value too.

    Keeping every tie (rather than whichever `torch.topk` returns) is what makes the merged answer
    independent of the batching: the heap then breaks ties by prompt and position.
    """
    flat = column.flatten()
    positive = int((flat > 0).sum())
    if positive == 0:
        return []
    bar = torch.topk(flat, min(k, positive)).values[-1]
    rows, cols = ((column >= bar) & (column > 0)).nonzero(as_tuple=True)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def _context(
    ids: Tensor, acts: Tensor, own: Tensor, lengths: Tensor, batch: list[int], row: int, col: int, context: int
) -> _Kept:
    """The kept entry of the token at (``row``, ``col``): its ordering key and its window of tokens."""
    position, length = int(own[row, col]), int(lengths[row])
    before, after = min(context, position), min(context, length - 1 - position)
    window = slice(col - before, col + after + 1)  # real tokens are contiguous in a padded row
    values = tuple(float(a) for a in acts[row, window])
    return (-float(acts[row, col]), batch[row], position, tuple(ids[row, window].tolist()), values, before)


def _examples(lm: LanguageModel, feature: int, active: int, entries: list[_Kept]) -> FeatureExamples:
    examples = [
        Example(
            prompt=prompt,
            position=position,
            activation=-negated,
            tokens=lm.token_texts(list(ids)),
            center=center,
            activations=list(values),
        )
        for negated, prompt, position, ids, values, center in entries
    ]
    return FeatureExamples(feature=feature, active_tokens=active, examples=examples)


# --- what a feature writes ----------------------------------------------------------------------------------


def logit_effect(lm: LanguageModel, sae: SAE, feature: int, *, top: int = 10) -> LogitEffect:
    """The tokens whose logits feature ``feature``'s decoder row raises and lowers most: ``W_U @ W_dec[f]``.

    ``W_U`` is the raw LM-head weight, without the final norm (see the module docstring); an LM-head bias
    (rare) is left out too, since it does not depend on the feature. Ties keep the lower token id first.

    Examples:
        A feature whose decoder row is the unembedding of " Paris" raises " Paris" most, then its neighbours:

        >>> import mechscope as ms
        >>> lm = ms.load("toy")
        >>> sae = SAE.random(lm.arch.d_model, 256, "resid_post.2", k=8, seed=0)
        >>> paris = lm.tokenizer(" Paris", add_special_tokens=False).input_ids[0]
        >>> with torch.no_grad():
        ...     _ = sae.W_dec[0].copy_(lm.arch.unembed().weight[paris])
        >>> [t.token for t in logit_effect(lm, sae, 0, top=3).positive]
        [' Paris', ' Brussels', ' Stockholm']

    Raises:
        InputError: a feature outside the SAE, ``top`` below 1, a site not in the residual basis (``head_out``
            is read before the attention's output projection), or a model without an unembedding.
        SiteError: the SAE's site does not exist on ``lm``.
    """
    if top < 1:
        raise InputError(f"top must be at least 1, got {top}")
    check_features(sae, [feature])
    check_sae(lm, sae)
    if sae.site.startswith("head_out"):
        raise InputError(
            f"{sae.site} is read before the attention's output projection, so its decoder rows are not in the "
            "residual stream's basis; logit effects need an SAE on resid_*, attn_out, mlp_out or embed"
        )
    head = lm.arch.unembed()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != sae.config.d_in:
        raise InputError(f"{lm.source} has no unembedding matrix of width {sae.config.d_in} to read features with")
    with torch.no_grad():
        row = sae.feature_direction(feature).to(device=weight.device, dtype=torch.float32)
        effect = (weight.float() @ row).cpu()
    count = min(top, effect.shape[0])
    up = torch.sort(-effect, stable=True).indices[:count].tolist()
    down = torch.sort(effect, stable=True).indices[:count].tolist()

    def scores(ids: list[int]) -> list[TokenEffect]:
        return [
            TokenEffect(token=t, token_id=i, effect=float(effect[i]))
            for t, i in zip(lm.token_texts(ids), ids, strict=True)
        ]

    return LogitEffect(site=sae.site, feature=feature, positive=scores(up), negative=scores(down))


__all__ = ["check_features", "check_sae", "encode", "evaluated", "logit_effect", "token_batches", "top_examples"]
__all__ += ["top_features"]
