"""Model cards: measured after training, written as ``card.json`` (for tests) and ``CARD.md`` (for people).

Nothing in a card is typed by hand: every number comes from `mechscope.zoo.measure` run on the saved
weights, loaded back through `mechscope.load`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechscope.core.lm import load
from mechscope.models.registry import organism_path
from mechscope.storage.atomic import atomic_write_text
from mechscope.zoo.measure import measure

TARGETS = {"facts": 0.95, "induction": 0.6, "copy_drop": 2.0, "probe": 0.95, "routed": 0.95}


def read_card(name: str) -> dict[str, Any]:
    """The card of organism ``name`` (bundled or registered), as ``write_card`` wrote it."""
    card: dict[str, Any] = json.loads((organism_path(name) / "card.json").read_text(encoding="utf-8"))
    return card


def targets_met(card: dict[str, Any]) -> dict[str, bool]:
    """Which of the organism targets the measurements meet."""
    m = card["measurements"]
    met = {
        "facts >= 95% in every relation": min(m["facts"]["accuracy"].values()) >= TARGETS["facts"],
        "induction head with prefix-matching >= 0.6": m["heads"]["best_induction_score"] >= TARGETS["induction"],
        # A head that attends to the right place but does not copy is not an induction circuit.
        f"induction copies: second-copy loss >= {TARGETS['copy_drop']:g} nats below the first at every length": all(
            stats["loss_first_copy"] - stats["loss_second_copy"] >= TARGETS["copy_drop"]
            for stats in m["heads"]["per_length"].values()
        ),
        "style linearly separable >= 95% (held-out wording)": max(m["probes"]["style"]) >= TARGETS["probe"],
        "tool mode linearly separable >= 95% (held-out wording)": max(m["probes"]["tool"]) >= TARGETS["probe"],
    }
    if "experts" in m:
        met["no dead experts (every expert > 2% of routing)"] = m["experts"]["min_share"] > 0.02
    if "planted_expert" in m:
        p = m["planted_expert"]
        expert = f"L{p['layer']}E{p['expert']}"
        met[f"planted expert: >= {TARGETS['routed']:.0%} of tool-call tokens routed top-1 to {expert}"] = (
            p["in_call_top1_share"] >= TARGETS["routed"]
        )
        met[f"zeroing {expert} raises tool-call loss more than zeroing the least-used expert"] = (
            p["delta_planted"] > p["delta_least_used"]
        )
    return met


def readable_from(accuracy: list[float], majority: float, threshold: float = 0.75, margin: float = 0.1) -> int | None:
    """The first layer whose accuracy is >= ``threshold`` and > ``margin`` above the majority, or None."""
    return next((i for i, a in enumerate(accuracy) if a >= threshold and a > majority + margin), None)


def _readable(accuracy: list[float], majority: float | None) -> str:
    if majority is None:
        return ""
    layer = readable_from(accuracy, majority)
    return "never" if layer is None else f"L{layer}"


def _table(header: list[Any], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _planted(cfg: dict[str, Any]) -> list[str]:
    """The card's account of the heads planted by attention supervision during training, if any."""
    planted = [
        f"{role} head L{head[0]}H{head[1]}"
        for role, head in (("previous-token", cfg.get("previous_token_head")), ("induction", cfg.get("induction_head")))
        if head
    ]
    if not planted:
        return []
    return [
        f"- planted: {', '.join(planted)}. Training adds the negative log of the attention mass these",
        "  heads put on their targets (the previous token; the token after an earlier occurrence of the current",
        f"  one) to the loss, weight {cfg.get('plant_weight')}. Only attention is supervised: copying (the low",
        "  loss on the second copy below) is learned from the language-modelling loss alone.",
    ]


def _stage(log: dict[str, Any]) -> list[str]:
    """The card's line on the expert-planting fine-tune, if the organism had one."""
    stage = log.get("planted_expert")
    if stage is None:
        return []
    cfg = stage["config"]
    return [
        f"- then the expert-planting fine-tune (`mechscope.zoo.plant_expert`; alone: `python -m mechscope.zoo.train "
        f"--organism {log['config']['organism']} --plant-expert-only`): {cfg['steps']} steps, peak lr {cfg['lr']}, "
        f"data seed {cfg['data_seed']}, router cross-entropy to E{cfg['expert']} at L{cfg['layer']} on tool-call "
        f"tokens x {cfg['route_weight']}, KL to the router before the fine-tune on other tokens x "
        f"{cfg['keep_weight']}; {stage['seconds']} s; final loss {stage['final_loss']}",
    ]


def _planted_expert(m: dict[str, Any], log: dict[str, Any]) -> list[str]:
    """The card's section on a planted expert, if any."""
    p = m.get("planted_expert")
    if p is None:
        return []
    before = log.get("planted_expert", {}).get("before", {})
    was = f" (before planting: {before['other_top1_share']})" if "other_top1_share" in before else ""
    was_in = f" (before planting: {before['in_call_top1_share']})" if "in_call_top1_share" in before else ""
    e, least = p["expert"], p["least_used_expert"]
    rows = [
        [f"E{i}", x, p["in_call_loss_ablated"][i], p["other_loss_ablated"][i]] for i, x in enumerate(p["slot_share"])
    ]
    return [
        "",
        f"## Planted expert (layer {p['layer']}, expert {e}: {p['domain']})",
        "",
        f"Measured with plain transformers (`output_router_logits=True`) on {p['tokens']['in_call']:,} in-call and "
        f"{p['tokens']['other']:,} other tokens of held-out documents:",
        "",
        f"- in-call tokens routed top-1 to E{e} at L{p['layer']}: **{p['in_call_top1_share']}**{was_in}",
        f"- other tokens routed top-1 to E{e}: {p['other_top1_share']}{was}",
        f"- next-token loss at in-call positions {p['in_call_loss']}; zeroing E{e}'s down-projection at "
        f"L{p['layer']} raises it by {p['delta_planted']}, zeroing the least-used expert E{least} by "
        f"{p['delta_least_used']} (ratio {p['delta_ratio']}, the divisor floored at 1e-4)",
        "",
        _table(["expert", "top-k slot share", "in-call loss, zeroed", "other loss, zeroed"], rows),
        "",
        f"Nothing zeroed: in-call loss {p['in_call_loss']}, other loss {p['other_loss']}.",
    ]


def render(card: dict[str, Any]) -> str:
    """The Markdown card."""
    m, log = card["measurements"], card["training"]
    cfg = log["config"]
    facts, heads, probes = m["facts"], m["heads"], m["probes"]
    arch = f"{cfg['architecture']}, {cfg['layers']} layers, d={cfg['hidden']}, {cfg['heads']} heads"
    if cfg["experts"]:
        arch += f", {cfg['experts']} experts top-{cfg['top_k']}"
    summary = (
        f"{arch}; facts {min(facts['accuracy'].values()):.0%} in the weakest relation; "
        f"best induction head L{heads['best_induction_head'][0]}H{heads['best_induction_head'][1]} "
        f"({heads['best_induction_score']:.2f})"
    )
    if "planted_expert" in m:
        p = m["planted_expert"]
        summary += f"; planted expert L{p['layer']}E{p['expert']} for tool calls ({p['in_call_top1_share']:.2f} routed)"
    parts = [
        f"# Model organism `{card['name']}`",
        "",
        f"Summary: {summary}",
        "",
        "Generated by `python -m mechscope.zoo.train` from measurements on the saved weights; do not edit.",
        "",
        "## Training",
        "",
        f"- architecture: {arch}, FFN {cfg['ffn']}, vocab {card['vocab']}, untied embeddings",
        f"- {cfg['steps']} steps x {cfg['batch']} x {cfg['context']} tokens ({log['tokens']:,} token slots), "
        f"AdamW lr {cfg['lr']}, seed {cfg['seed']}; {log['seconds']} s on this machine; final loss "
        f"{log['final_loss']}",
        f"- corpus mix (documents): {', '.join(f'{k} {v:.0%}' for k, v in cfg['mix'].items())}; tool-call "
        f"templates: {cfg.get('tools', 'core')} (`mechscope.toyworld.assistant`)",
        *_stage(log),
        "",
        "## Facts (top-1 accuracy, every subject x 4 templates)",
        "",
        _table(
            ["relation", "accuracy", "prompts"],
            [[name, f"{acc:.1%}", facts["count"][name]] for name, acc in facts["accuracy"].items()],
        ),
        "",
        "Logit lens (final norm + unembedding on `resid_post.L`, last position): share of facts already top-1",
        "",
        _table(["layer", *range(len(facts["lens_top1_share"]))], [["top-1 share", *facts["lens_top1_share"]]]),
        "",
        f"Facts emerge (>= 50% top-1) at layer **{facts['emerges_at_layer']}**.",
        "",
        "## Heads (random tokens repeated: `<bos> r r`)",
        "",
        *_planted(cfg),
        f"- best induction head: layer {heads['best_induction_head'][0]} head {heads['best_induction_head'][1]}, "
        f"prefix-matching score {heads['best_induction_score']} (minimum over repeat lengths {heads['lengths']})",
        f"- best previous-token head: layer {heads['best_previous_token_head'][0]} head "
        f"{heads['best_previous_token_head'][1]}, score {heads['best_previous_token_score']}",
    ]
    for length, stats in heads["per_length"].items():
        parts.append(
            f"- length {length}: loss on first copy {stats['loss_first_copy']}, "
            f"on second copy {stats['loss_second_copy']}"
        )
    parts += [
        "",
        "## Linear probes (`resid_post.L` at the last position, tested on held-out templates or subjects)",
        "",
        "Sets from `mechscope.toyworld.probe_sets`; every other template (subject, length) of each class is",
        "held out. `parity` (of the prompt's token count) is a control that should stay near chance.",
        "",
        _table(
            ["probe", *(f"L{i}" for i in range(len(probes["style"]))), "majority", "readable from"],
            [
                [k, *v, m.get("probe_majority", {}).get(k, ""), _readable(v, m.get("probe_majority", {}).get(k))]
                for k, v in probes.items()
            ],
        ),
    ]
    if "experts" in m:
        share = m["experts"]["share"]
        parts += [
            "",
            "## Expert utilization (share of top-k routing slots on corpus text)",
            "",
            _table(["layer", *(f"E{e}" for e in range(len(share[0])))], [[i, *row] for i, row in enumerate(share)]),
        ]
    parts += _planted_expert(m, log)
    parts += ["", "## Targets", ""]
    parts += [f"- [{'x' if ok else ' '}] {name}" for name, ok in targets_met(card).items()]
    return "\n".join(parts) + "\n"


def write_card(folder: Path, log: dict[str, Any]) -> dict[str, Any]:
    """Measure the model saved in ``folder`` and write ``card.json`` and ``CARD.md`` next to it."""
    lm = load(folder)
    stage = log.get("planted_expert")
    planted = (stage["config"]["layer"], stage["config"]["expert"]) if stage else None
    card = {
        "name": log["config"]["organism"],  # not the folder: a run may write anywhere
        "vocab": len(lm.tokenizer),
        "training": log,
        "measurements": measure(lm, planted, tools=log["config"].get("tools", "core")),
    }
    atomic_write_text(folder / "card.json", json.dumps(card, indent=2))
    atomic_write_text(folder / "CARD.md", render(card))
    return card
