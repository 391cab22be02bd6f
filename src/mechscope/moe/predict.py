"""Routing prediction: how well a linear probe on the residual stream predicts the experts of later layers.

For each pair (``from_layer`` l, ``to_layer`` m ≥ l, m an MoE layer), a multinomial logistic regression reads
``resid_pre.l`` (the residual stream entering layer l) at every real token and predicts the token's top-1
expert at layer m (the router's first choice). The residuals are standardised with the training tokens'
mean and deviation first (the routers read them after a norm, so the raw scale says little).

The split is by **prompt**, never by token: a fixed-seed shuffle holds out ``test_share`` of the prompts, so
no held-out token has a neighbour of its own prompt in the training data. Accuracy is on the held-out
tokens, next to the **majority baseline** (always answering the training tokens' most frequent expert) and
chance ``1 / n_experts``.

Memory: one forward pass per batch keeps only the asked layers' residuals (float32) and top-1 experts of its
real tokens; in all ``tokens x d_model x len(from_layers)`` floats. ``max_examples`` caps the tokens: prompts
are taken in corpus order until the cap is reached (the last one whole), the rest are not run.

Examples:
    >>> import mechscope as ms
    >>> from mechscope.zoo.corpus import text_documents
    >>> lm = ms.load("toy-moe")
    >>> corpus = [d.text for d in text_documents(seed=3, count=40) if d.text]
    >>> result = predict(lm, corpus, from_layers=[1], to_layers=[1])
    >>> score = result.score(1, 1)
    >>> score.accuracy > score.majority, score.chance
    (True, 0.25)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mechscope.errors import InputError
from mechscope.moe.info import moe_layers, require_moe
from mechscope.moe.path_results import ProbeScore, RoutingPrediction
from mechscope.progress import bar

if TYPE_CHECKING:
    import numpy as np

    from mechscope.core.lm import LanguageModel

#: The solver's iteration limit (lbfgs on standardised inputs converges well within it on the organisms).
MAX_ITER = 500
#: The probe in words, as `RoutingPrediction.probe` records it.
PROBE = "multinomial logistic regression (scikit-learn lbfgs, C=1.0) on standardised residuals"


def predict(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    from_layers: Sequence[int] | None = None,
    to_layers: Sequence[int] | None = None,
    test_share: float = 0.25,
    seed: int = 0,
    batch_size: int = 32,
    max_tokens: int | None = None,
    max_examples: int | None = 20_000,
    progress: bool = False,
) -> RoutingPrediction:
    """Fit a probe from ``resid_pre.l`` to the top-1 expert of MoE layer m for every pair l ≤ m asked.

    Args:
        from_layers: the layers whose input residual the probes read (negative counts from the end; default:
            every layer up to the last MoE layer asked).
        to_layers: the MoE layers whose routing is predicted (default: every MoE layer).
        test_share: the share of prompts held out for testing, in (0, 1); at least one prompt on each side.
        seed: the seed of the prompt split.
        batch_size, max_tokens: at most this many prompts, and padded tokens, per forward pass.
        max_examples: stop taking prompts once this many tokens are collected (None: the whole corpus).
        progress: a progress bar on stderr (only on a terminal).

    Examples:
        Can the residual entering layer 0 tell which expert layer 1 will choose first? Better than the majority:

        >>> import mechscope as ms
        >>> lm = ms.load("toy-moe")
        >>> calls = [
        ...     "<user> Tell me the local time in Bern. <assistant> <call>time(city=Bern)</call>",
        ...     "<user> Look up hotels in Ankara. <assistant> <call>search(query=hotels Ankara)</call>",
        ... ]
        >>> result = predict(lm, [*calls, "The capital of France is Paris.", "Hot is the opposite of cold."],
        ...                  from_layers=[0], to_layers=[1])
        >>> result.train_prompts, result.test_prompts, result.test_tokens
        (3, 1, 9)
        >>> score = result.score(0, 1)
        >>> round(score.accuracy, 3), round(score.majority, 3), score.chance
        (0.667, 0.222, 0.25)

    Raises:
        MoEError: the model has no experts.
        SiteError: a layer is outside the model, or a ``to_layers`` layer has no router.
        InputError: fewer than two prompts (after the cap), no pair with ``to_layer >= from_layer``, a bad
            ``test_share`` or ``max_examples``, or an empty or too long prompt.
    """
    import numpy as np

    from mechscope.core.bulk import token_ids

    require_moe(lm)
    if isinstance(prompts, str):
        raise InputError("predict takes a list of prompts (a corpus), not one string")
    if len(prompts) == 0:
        raise InputError("the corpus is empty; give at least one prompt (one per line of the prompts file)")
    if not (isinstance(test_share, int | float) and 0 < test_share < 1):
        raise InputError(f"the test share is a fraction of the prompts in (0, 1), got {test_share}")
    if max_examples is not None and max_examples < 1:
        raise InputError(f"max_examples must be at least 1, got {max_examples}")
    targets = moe_layers(lm, to_layers)
    sources = _sources(lm, from_layers, max(targets))
    pairs = [(source, target) for source in sources for target in targets if target >= source]
    if not pairs:
        raise InputError(
            f"no layer pair to probe: every to-layer {targets} is before every from-layer {sources}; "
            "the probe predicts routing at or after the layer it reads"
        )
    ids = token_ids(lm, prompts)
    used = within_cap([len(row) for row in ids], max_examples)
    if len(used) < 2:
        raise InputError(
            f"predict needs at least 2 prompts to hold some out, got {len(used)}"
            + (f" within max_examples={max_examples} tokens" if len(used) < len(ids) else "")
        )
    test = held_out(len(used), test_share, seed)
    needed = (sorted({s for s, _ in pairs}), sorted({t for _, t in pairs}))
    owner, residuals, experts = _collect(lm, [ids[i] for i in used], *needed, batch_size, max_tokens, progress)
    is_test = np.isin(owner, test)
    scores = []
    for source, target in pairs:
        x, y = residuals[source], experts[target]
        scores.append(
            fit_probe(
                x[~is_test],
                y[~is_test],
                x[is_test],
                y[is_test],
                n_experts=lm.arch.n_experts,
                from_layer=source,
                to_layer=target,
            )
        )
    return RoutingPrediction(
        model=lm.source,
        family=lm.arch.family,
        n_experts=lm.arch.n_experts,
        top_k=lm.arch.top_k,
        site="resid_pre",
        probe=PROBE,
        prompts=len(used),
        train_prompts=len(used) - len(test),
        test_prompts=len(test),
        train_tokens=int((~is_test).sum()),
        test_tokens=int(is_test.sum()),
        test_share=float(test_share),
        seed=seed,
        max_examples=max_examples,
        capped=len(used) < len(ids),
        scores=scores,
    )


def within_cap(lengths: Sequence[int], max_examples: int | None) -> list[int]:
    """The prompts (indices, in order) taken until ``max_examples`` tokens are reached, the last one whole.

    >>> within_cap([5, 5, 5, 5], 8), within_cap([5, 5], None)
    ([0, 1], [0, 1])
    """
    if max_examples is None:
        return list(range(len(lengths)))
    taken, total = [], 0
    for i, length in enumerate(lengths):
        if total >= max_examples:
            break
        taken.append(i)
        total += length
    return taken


def held_out(prompts: int, test_share: float, seed: int) -> list[int]:
    """The held-out prompts (sorted indices): ``round(test_share * prompts)`` of them, at least 1, at most all but 1.

    >>> held_out(8, 0.25, seed=0) == held_out(8, 0.25, seed=0), len(held_out(8, 0.25, seed=0)), held_out(2, 0.9, 0)
    (True, 2, [0])
    """
    import numpy as np

    count = max(1, min(prompts - 1, round(test_share * prompts)))
    order = np.random.default_rng(seed).permutation(prompts)
    return sorted(int(i) for i in order[:count])


def fit_probe(
    train_x: np.ndarray[Any, Any],
    train_y: np.ndarray[Any, Any],
    test_x: np.ndarray[Any, Any],
    test_y: np.ndarray[Any, Any],
    *,
    n_experts: int,
    from_layer: int,
    to_layer: int,
) -> ProbeScore:
    """Fit the probe on ``(train_x, train_y)`` and score it on ``(test_x, test_y)`` with its baselines.

    ``x`` rows are tokens' residuals, ``y`` their top-1 experts. With one class in training, the probe is that
    constant (it then scores exactly the majority baseline).

    Examples:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")
        >>> y = (x[:, 0] > 0).astype(int)  # linearly decodable
        >>> s = fit_probe(x[:150], y[:150], x[150:], y[150:], n_experts=2, from_layer=0, to_layer=0)
        >>> s.accuracy > 0.9, s.majority < 0.7
        (True, True)
    """
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if len(train_y) == 0 or len(test_y) == 0:
        raise InputError("the probe needs tokens on both sides of the split")
    classes, counts = np.unique(train_y, return_counts=True)
    majority = int(classes[int(np.argmax(counts))])
    converged = True
    if len(classes) == 1:
        train_pred, test_pred = np.full(len(train_y), majority), np.full(len(test_y), majority)
    else:
        scaler = StandardScaler().fit(train_x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(max_iter=MAX_ITER).fit(scaler.transform(train_x), train_y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        train_pred, test_pred = model.predict(scaler.transform(train_x)), model.predict(scaler.transform(test_x))
    return ProbeScore(
        from_layer=from_layer,
        to_layer=to_layer,
        accuracy=float((test_pred == test_y).mean()),
        train_accuracy=float((train_pred == train_y).mean()),
        majority=float((test_y == majority).mean()),
        majority_expert=majority,
        chance=1.0 / n_experts,
        classes=len(classes),
        converged=converged,
    )


def _sources(lm: LanguageModel, from_layers: Sequence[int] | None, last_target: int) -> list[int]:
    """The residual layers to read, checked (a `SiteError` names the valid range)."""
    if from_layers is None:
        return list(range(last_target + 1))
    sites = lm.sites([f"resid_pre.{layer}" for layer in from_layers])
    return sorted({site.layer for site in sites if site.layer is not None})


def _collect(
    lm: LanguageModel,
    ids: list[list[int]],
    sources: list[int],
    targets: list[int],
    batch_size: int,
    max_tokens: int | None,
    progress: bool,
) -> tuple[np.ndarray[Any, Any], dict[int, np.ndarray[Any, Any]], dict[int, np.ndarray[Any, Any]]]:
    """``(owner, residuals, experts)`` over every real token: its prompt (index into ``ids``), its
    ``resid_pre`` per source layer (float32 ``[tokens, d_model]``) and its top-1 expert per target layer."""
    import numpy as np
    import torch

    from mechscope.core.batching import plan_batches

    plan = [
        batch for window in plan_batches([len(r) for r in ids], batch_size, max_tokens=max_tokens) for batch in window
    ]
    sites = [f"resid_pre.{layer}" for layer in sources] + [f"expert_index.{layer}" for layer in targets]
    owners: list[np.ndarray[Any, Any]] = []
    residuals: dict[int, list[np.ndarray[Any, Any]]] = {layer: [] for layer in sources}
    experts: dict[int, list[np.ndarray[Any, Any]]] = {layer: [] for layer in targets}
    with bar("probe data", len(ids), enabled=progress) as shown:
        for batch in plan:
            padded = lm.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt")
            encoded = lm.encode({"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]})
            with lm.capture(sites, to="cpu") as cache, torch.no_grad():
                lm.model(**encoded, use_cache=False)
            mask = encoded["attention_mask"].bool().cpu()
            owners.append(np.repeat(np.array(batch), mask.sum(dim=1).numpy()))
            for layer in sources:
                residuals[layer].append(cache[f"resid_pre.{layer}"][mask].float().numpy())
            for layer in targets:
                experts[layer].append(cache[f"expert_index.{layer}"][mask][:, 0].numpy())
            if shown is not None:
                shown.advance(len(batch))
    return (
        np.concatenate(owners),
        {layer: np.concatenate(parts) for layer, parts in residuals.items()},
        {layer: np.concatenate(parts) for layer, parts in experts.items()},
    )
