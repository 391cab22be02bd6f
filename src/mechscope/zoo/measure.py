"""Measurements of what an organism knows and where: the numbers its model card reports.

Each function is deterministic (fixed seeds) and fast enough for a test to re-run it on the committed
weights and compare with the card.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mechscope.core.lm import LanguageModel
from mechscope.core.repeats import repeat_scores, repeated_sequences
from mechscope.toyworld import probe_sets
from mechscope.toyworld.assistant import ToolSet
from mechscope.toyworld.facts import RELATIONS
from mechscope.zoo import corpus

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


def _softmax_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Held-out accuracy of L2-regularised multinomial logistic regression (standardised features, LBFGS)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = train_x @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, train_y) + 1e-2 * weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(-1) == test_y).float().mean())


def _held_out_groups(rows: list[probe_sets.Example]) -> set[str]:
    """Every other group (sorted) of each sub-label: the groups a card's probe is tested on."""
    strata: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        strata[row.sub_label].add(row.group)
    return {group for groups in strata.values() for group in sorted(groups)[1::2]}


def probe_examples(lm: LanguageModel, tools: ToolSet = "wide") -> dict[str, list[probe_sets.Example]]:
    """The card's probe sets (`mechscope.toyworld.probe_sets`), each row's ``label`` the class to read.

    ``tool_type`` is the tool among tool requests; ``parity`` the parity of the prompt's token count, a
    control that should stay at chance.
    """
    tool_rows = probe_sets.tool_examples(per_template=6, seed=99, tools=tools)
    names = sorted({r.sub_label for r in tool_rows if r.label == 1})
    lengths = [len(ids) for ids in lm.tokenizer([t for t, _ in probe_sets.parity_texts()])["input_ids"]]
    return {
        "tool": tool_rows,
        "tool_type": [r._replace(label=names.index(r.sub_label)) for r in tool_rows if r.label == 1],
        "style": probe_sets.style_examples(),
        "relation": probe_sets.relation_examples(),
        "country": probe_sets.country_examples(),
        "parity": [
            probe_sets.Example(text, n % 2, "even" if n % 2 == 0 else "odd", group)
            for (text, group), n in zip(probe_sets.parity_texts(), lengths, strict=True)
        ],
    }


def probes(lm: LanguageModel, tools: ToolSet = "wide") -> dict[str, Any]:
    """Per property, the held-out linear-probe accuracy at each layer and the majority baseline.

    Features are ``resid_post.L`` at the last position; every other template (or subject, or length) of
    each class is held out, so a probe is tested on wording it never saw (`_held_out_groups`).
    """
    accuracy: dict[str, list[float]] = {}
    majority: dict[str, float] = {}
    for name, rows in probe_examples(lm, tools).items():
        test_groups = _held_out_groups(rows)
        sides = [[r for r in rows if r.group not in test_groups], [r for r in rows if r.group in test_groups]]
        features, labels = [], []
        for side in sides:
            with lm.capture(["resid_post.*"], positions="last") as cache:
                for chunk in _batched([r.prompt for r in side]):
                    lm.forward(chunk)
            features.append(cache)
            labels.append(torch.tensor([r.label for r in side]))
        common = int(torch.bincount(labels[0]).argmax())
        majority[name] = round(float((labels[1] == common).float().mean()), 4)
        accuracy[name] = [
            round(
                _softmax_accuracy(
                    features[0][f"resid_post.{layer}"].float(),
                    labels[0],
                    features[1][f"resid_post.{layer}"].float(),
                    labels[1],
                ),
                4,
            )
            for layer in range(lm.arch.n_layers)
        ]
    return {"accuracy": accuracy, "majority": majority}


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


def in_call_mask(ids: Tensor, open_id: int, close_id: int) -> Tensor:
    """Which tokens of ``ids`` (``[..., pos]``) lie inside a tool call, ``<call>`` and ``</call>`` included."""
    opens, closes = (ids == open_id).long(), (ids == close_id).long()
    return opens.cumsum(-1) - closes.cumsum(-1) + closes > 0


def planted_expert_texts(documents: int = 512, tool_calls: int = 300, seed: int = 777) -> list[str]:
    """Evaluation text for a planted tool-call expert: card-corpus documents plus extra tool-call documents."""
    rng = random.Random(seed + 1)
    extra = [corpus.tool_call_document(rng).text for _ in range(tool_calls)]
    return [d.text for d in corpus.text_documents(seed, documents)] + extra


def _right_padded(tokenizer: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` of ``texts``, padded on the right so positions count from 0."""
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = torch.tensor(tokens), True
    return ids, mask


def _routing_and_loss(model: Any, ids: Tensor, mask: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """Router logits at ``layer`` (``[batch, pos, experts]``) and the next-token loss at each position.

    A position's loss is that of predicting the token after it; positions with no next token get NaN.
    """
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask.long(), output_router_logits=True)
    router = output.router_logits[layer].reshape(*ids.shape, -1)
    loss = torch.nn.functional.cross_entropy(
        output.logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
    )
    loss = torch.cat([loss.masked_fill(~mask[:, 1:], float("nan")), torch.full_like(loss[:, :1], float("nan"))], 1)
    return router, loss


@contextlib.contextmanager
def zeroed_expert(model: Any, layer: int, expert: int | None) -> Iterator[None]:
    """Zero the down-projection of ``expert`` at ``layer`` of a transformers Mixtral (None: nothing) while inside."""
    if expert is None:
        yield
        return
    weight = model.model.layers[layer].mlp.experts.down_proj
    saved = weight.data[expert].clone()
    weight.data[expert] = 0
    try:
        yield
    finally:
        weight.data[expert] = saved


_Batch = tuple[Tensor, Tensor, Tensor]  # input ids, attention mask, [in-call, other] token masks


def _call_batches(tokenizer: Any, texts: list[str]) -> list[_Batch]:
    """Right-padded batches of ``texts`` with masks of their in-call and other real tokens."""
    open_id, close_id = tokenizer.convert_tokens_to_ids([corpus.CALL_OPEN, corpus.CALL_CLOSE])
    result = []
    for chunk in _batched(sorted(texts, key=len), 128):  # similar lengths together: little padding
        ids, mask = _right_padded(tokenizer, chunk)
        inside = in_call_mask(ids, open_id, close_id)
        result.append((ids, mask, torch.stack([inside & mask, ~inside & mask])))
    return result


def _routing_and_ablations(model: Any, batches: list[_Batch], layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """Routing at ``layer`` and the mean next-token loss with each expert there zeroed in turn.

    Returns top-1 counts per expert of in-call and other tokens (``[2, experts]``), top-k slot counts
    (``[experts]``), and the mean loss at in-call and other positions (``[experts + 1, 2]``: row e with
    expert e zeroed, the last row with nothing zeroed).
    """
    n, top_k = model.config.num_local_experts, model.config.num_experts_per_tok
    top1, slots = torch.zeros(2, n), torch.zeros(n)
    sums, counts = torch.zeros(n + 1, 2), torch.zeros(n + 1, 2)
    for row, ablated in ((n, None), *enumerate(range(n))):
        with zeroed_expert(model, layer, ablated):
            for ids, mask, groups in batches:
                router, loss = _routing_and_loss(model, ids, mask, layer)
                if ablated is None:
                    chosen = router.argmax(-1)
                    for column, group in enumerate(groups):
                        top1[column] += torch.bincount(chosen[group], minlength=n)
                    slots += torch.bincount(router.topk(top_k, -1).indices[mask].flatten(), minlength=n)
                for column, group in enumerate(groups):
                    valid = group & ~loss.isnan()
                    sums[row, column] += loss[valid].sum()
                    counts[row, column] += valid.sum()
    return top1, slots, sums / counts


def planted_expert(model: Any, tokenizer: Any, layer: int, expert: int) -> dict[str, Any]:
    """How a planted tool-call expert routes, and what zeroing it costs, measured with plain transformers.

    ``model`` is a transformers Mixtral-style model (router logits from ``output_router_logits=True``, experts
    packed in ``mlp.experts.down_proj``). On `planted_expert_texts`: the share of in-call tokens (``<call>`` to
    ``</call>``) and of other tokens whose top-1 expert at ``layer`` is ``expert``; each expert's share of the
    top-k slots there (the least-used expert has the smallest); and the next-token loss at in-call and other
    positions with nothing ablated and with each expert's down-projection at ``layer`` zeroed in turn (the
    router unchanged). ``delta_ratio`` divides the planted expert's in-call loss increase by the least-used
    expert's, floored at 1e-4 nats.
    """
    batches = _call_batches(tokenizer, planted_expert_texts())
    top1, slots, losses = _routing_and_ablations(model, batches, layer)
    share = slots / slots.sum()
    least = int(share.argmin())
    delta = losses[:-1, 0] - losses[-1, 0]
    return {
        "layer": layer,
        "expert": expert,
        "domain": "tool-call tokens (<call>..</call>)",
        "tokens": {"in_call": int(top1[0].sum()), "other": int(top1[1].sum())},
        "in_call_top1_share": round(float(top1[0, expert] / top1[0].sum()), 4),
        "other_top1_share": round(float(top1[1, expert] / top1[1].sum()), 4),
        "slot_share": [round(float(x), 4) for x in share],
        "least_used_expert": least,
        "in_call_loss": round(float(losses[-1, 0]), 4),
        "in_call_loss_ablated": [round(float(x), 4) for x in losses[:-1, 0]],
        "other_loss": round(float(losses[-1, 1]), 4),
        "other_loss_ablated": [round(float(x), 4) for x in losses[:-1, 1]],
        "delta_planted": round(float(delta[expert]), 4),
        "delta_least_used": round(float(delta[least]), 4),
        "delta_ratio": round(float(delta[expert] / delta[least].clamp(min=1e-4)), 1),
    }


def measure(lm: LanguageModel, planted: tuple[int, int] | None = None, tools: ToolSet = "wide") -> dict[str, Any]:
    """Every measurement the card reports.

    ``planted``: the ``(layer, expert)`` of a planted tool-call expert; ``tools``: the tool set the organism
    was trained on (its probes ask about that wording).
    """
    probed = probes(lm, tools)
    result: dict[str, Any] = {
        "facts": facts(lm),
        "heads": heads(lm),
        "probes": probed["accuracy"],
        "probe_majority": probed["majority"],
    }
    if lm.arch.is_moe:
        result["experts"] = experts(lm)
    if planted is not None:
        result["planted_expert"] = planted_expert(lm.model, lm.tokenizer, *planted)
    return result
