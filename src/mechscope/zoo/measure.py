"""Measurements of what an organism knows and where: the numbers its model card reports.

Each function is deterministic (fixed seeds) and fast enough for a test to re-run it on the committed
weights and compare with the card.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from mechscope.core.lm import LanguageModel
from mechscope.core.repeats import repeat_scores, repeated_sequences
from mechscope.zoo import corpus
from mechscope.zoo.world import RELATIONS

BATCH = 64


def _batched(items: list[Any], size: int = BATCH) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _answer_id(lm: LanguageModel, answer: str) -> int:
    return lm.token_id(answer)  # every answer of the toy world is one token of the organisms' vocabulary


def _unembed(lm: LanguageModel, resid: Tensor) -> Tensor:
    """Logit lens: the model's own read-out (final norm, unembedding) applied to a residual."""
    with torch.no_grad():
        return lm.arch.logits(resid)


def facts(lm: LanguageModel) -> dict[str, Any]:
    """Top-1 accuracy per relation, and per layer (logit lens) the share of facts already top-1."""
    n = lm.arch.n_layers
    per_relation: dict[str, list[bool]] = defaultdict(list)
    per_layer = torch.zeros(n)
    total = 0
    for relation in RELATIONS:
        items = corpus.fact_prompts(relation)
        for chunk in _batched(items):
            prompts = [p for _, p, _ in chunk]
            targets = torch.tensor([_answer_id(lm, a) for _, _, a in chunk])
            with lm.capture(["resid_post.*"], positions="last") as cache:
                logits = lm.forward(prompts)[:, -1]
            per_relation[relation.name] += (logits.argmax(-1) == targets).tolist()
            for layer in range(n):
                lens = _unembed(lm, cache[f"resid_post.{layer}"])
                per_layer[layer] += (lens.argmax(-1) == targets).sum()
            total += len(chunk)
    layer_share = (per_layer / total).tolist()
    emerge = next((i for i, share in enumerate(layer_share) if share >= 0.5), None)
    return {
        "accuracy": {name: round(sum(v) / len(v), 4) for name, v in per_relation.items()},
        "count": {name: len(v) for name, v in per_relation.items()},
        "lens_top1_share": [round(s, 4) for s in layer_share],
        "emerges_at_layer": emerge,
    }


def heads(lm: LanguageModel, lengths: tuple[int, ...] = (20, 40), count: int = 32) -> dict[str, Any]:
    """Induction (prefix-matching) and previous-token scores per head, and the copy loss, on repeats.

    The scores are `mechscope.core.repeats.repeat_scores` on ``<bos> r r`` sequences of random tokens, at
    each of ``lengths``; a head's score is its minimum over the lengths (a head that looks back a fixed
    distance scores at one length only). The copy loss is the next-token loss on the second copy: an induction
    circuit makes it far lower than on the first copy.
    """
    result: dict[str, Any] = {"lengths": list(lengths), "per_length": {}}
    induction, previous = [], []
    for length in lengths:
        ids = repeated_sequences(lm, count, length, seed=1234)
        scores = repeat_scores(lm, ids, length)
        logits = scores.logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).reshape(count, -1)
        induction.append(scores.induction)
        previous.append(scores.previous_token)
        result["per_length"][str(length)] = {
            "induction": [[round(float(x), 4) for x in row] for row in scores.induction],
            "previous_token": [[round(float(x), 4) for x in row] for row in scores.previous_token],
            "loss_first_copy": round(float(loss[:, 1:length].mean()), 4),
            "loss_second_copy": round(float(loss[:, length + 1 :].mean()), 4),
        }
    for role, stacked in (("induction", induction), ("previous_token", previous)):
        worst = torch.stack(stacked).amin(0)
        best = int(worst.argmax())
        result[f"best_{role}_head"] = [best // lm.arch.n_heads, best % lm.arch.n_heads]
        result[f"best_{role}_score"] = round(float(worst.flatten()[best]), 4)
    return result


def _logistic_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Held-out accuracy of an L2-regularised logistic regression (standardised features, LBFGS)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = train_x @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, train_y) + 1e-2 * weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return float((((test_x @ weight + bias) > 0).float() == test_y).float().mean())


_NEUTRAL = (
    "Tell me about {t}.",
    "What do you think of {t}?",
    "Describe {t} for me.",
    "Say something about {t}.",
    "I want to hear about {t}.",
    "Write a note about {t}.",
)
_HELD_OUT_TOPICS = ("the river", "the castle", "the garden", "the winter", "the harbour", "the library")


def probe_sets(kind: str) -> tuple[list[str], list[int], list[str], list[int]]:
    """Train and held-out prompts with labels for the ``style`` or ``tool`` probe."""
    rng = random.Random(99)
    if kind == "style":
        train_topics, test_topics = list(corpus._TOPICS), list(_HELD_OUT_TOPICS)

        def make(topics: list[str]) -> tuple[list[str], list[int]]:
            prompts, labels = [], []
            for template in _NEUTRAL:
                for topic in topics:
                    for label, marker in enumerate((corpus.FORMAL, corpus.PIRATE)):
                        prompts.append(f"{marker} {template.format(t=topic)}")
                        labels.append(label)
            return prompts, labels

        return (*make(train_topics), *make(test_topics))
    requests = [corpus.tool_request(rng)[0] for _ in range(80)]
    chats = [corpus.chat_exchange(rng)[0] for _ in range(80)]
    prompts = [f"{corpus.USER} {text}{corpus.ASSISTANT}" for text in requests + chats]
    labels = [1] * len(requests) + [0] * len(chats)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    half = len(order) // 2
    first, second = order[:half], order[half:]
    return (
        [prompts[i] for i in first],
        [labels[i] for i in first],
        [prompts[i] for i in second],
        [labels[i] for i in second],
    )


def probes(lm: LanguageModel) -> dict[str, list[float]]:
    """Held-out linear-probe accuracy per layer for style (formal vs pirate) and tool mode."""
    result = {}
    for kind in ("style", "tool"):
        train_p, train_y, test_p, test_y = probe_sets(kind)
        features = []
        for prompts in (train_p, test_p):
            with lm.capture(["resid_post.*"], positions="last") as cache:
                for chunk in _batched(prompts):
                    lm.forward(chunk)
            features.append(cache)
        result[kind] = [
            round(
                _logistic_accuracy(
                    features[0][f"resid_post.{layer}"],
                    torch.tensor(train_y, dtype=torch.float32),
                    features[1][f"resid_post.{layer}"],
                    torch.tensor(test_y, dtype=torch.float32),
                ),
                4,
            )
            for layer in range(lm.arch.n_layers)
        ]
    return result


def experts(lm: LanguageModel, documents: int = 256) -> dict[str, Any]:
    """Share of top-k routing slots each expert receives, per MoE layer, on corpus text."""
    texts = [d.text for d in corpus.text_documents(777, documents)]
    counts = torch.zeros(len(lm.arch.moe_layers), lm.arch.n_experts)
    for chunk in _batched(texts, 32):
        mask = lm.tokenize(chunk)["attention_mask"].bool()
        with lm.capture(["expert_index.*"]) as cache:
            lm.forward(chunk)
        for row, layer in enumerate(lm.arch.moe_layers):
            chosen = cache[f"expert_index.{layer}"][mask]
            counts[row] += torch.bincount(chosen.flatten(), minlength=lm.arch.n_experts)
    shares = counts / counts.sum(dim=1, keepdim=True)
    return {
        "share": [[round(float(x), 4) for x in row] for row in shares],
        "min_share": round(float(shares.min()), 4),
        "max_share": round(float(shares.max()), 4),
    }


def measure(lm: LanguageModel) -> dict[str, Any]:
    """Every measurement the card reports."""
    result: dict[str, Any] = {"facts": facts(lm), "heads": heads(lm), "probes": probes(lm)}
    if lm.arch.is_moe:
        result["experts"] = experts(lm)
    return result
