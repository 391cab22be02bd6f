"""Train a model organism from scratch: ``python -m mechscope.zoo.train --organism toy``.

The corpus, tokenizer, initialisation and batch order are all fixed by ``--seed``, so a run reproduces the
committed weights up to floating-point differences between machines. After training the model is saved
with ``save_pretrained`` (safetensors, each file moved into place atomically) and measured; the
measurements become ``CARD.md`` and ``card.json``.

An organism with an entry in `EXPERT_PLANTS` (``toy-moe``) then runs a second stage, a fine-tune that plants
a routing mechanism (`mechscope.zoo.plant_expert`: tool-call tokens go top-1 to one expert at one layer)
before it is measured. ``--plant-expert-only`` runs that stage alone on the model already in the output
folder, which is how the bundled toy-moe got its planted expert (about 2.5 minutes on 2 otherwise idle CPU cores)::

    python -m mechscope.zoo.train --organism toy-moe                       # from scratch, then the stage
    python -m mechscope.zoo.train --organism toy-moe --plant-expert-only   # the stage alone
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.storage.atomic import atomic_write, atomic_write_text
from mechscope.toyworld.assistant import ToolSet
from mechscope.zoo import corpus
from mechscope.zoo.tokenizer import save_tokenizer, train_tokenizer

ZOO = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines an organism; stored in its card."""

    organism: str
    architecture: str  # "llama" or "mixtral"
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    ffn: int = 512
    experts: int = 0
    top_k: int = 0
    router_aux_loss: float = 0.02
    rope_theta: float = 10_000.0
    context: int = 128
    max_positions: int = 256
    steps: int = 1500
    batch: int = 32
    lr: float = 3e-3
    warmup: float = 0.05
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    repeat_pool: int = 0  # 0: every ordinary token id
    # Planted heads (layer, head): their attention is supervised towards the previous token and towards the
    # token after an earlier occurrence of the current one, which skips the induction-head plateau that small
    # models on a CPU budget do not leave in thousands of steps. ``--no-plant`` sets both to None.
    previous_token_head: tuple[int, int] | None = (0, 0)
    induction_head: tuple[int, int] | None = (1, 0)
    # Measured on 2 CPU cores: 0.1 and 0.3 both plant the heads (induction 0.97-0.99). For the MoE 0.3 costs
    # facts (opposites 83%); for the dense model 0.1 leaves style probes at 0.86, so ``toy`` uses 0.3.
    plant_weight: float = 0.1
    mix: dict[str, float] = field(default_factory=lambda: dict(corpus.DEFAULT_MIX))
    # The tool-call wording (`mechscope.zoo.corpus`): "wide" (8 tools x 4 templates, 18 chit-chat templates)
    # gives a tool mode that a probe finds on templates it never saw (measured: toy); toy-moe was trained on
    # "core" before the wide set existed, and keeps it so that its recipe reproduces its weights.
    tools: ToolSet = "core"

    @property
    def plants(self) -> bool:
        """Whether training supervises the attention of planted heads."""
        return self.previous_token_head is not None or self.induction_head is not None


ORGANISMS: dict[str, TrainConfig] = {
    # 1800 steps: with the wide tool wording, 1500 left the opposites at 92.5% (below the 95% target).
    "toy": TrainConfig(organism="toy", architecture="llama", plant_weight=0.3, tools="wide", steps=1800),
    "toy-moe": TrainConfig(organism="toy-moe", architecture="mixtral", ffn=256, experts=4, top_k=2),
}


@dataclass(frozen=True)
class ExpertPlant:
    """A planted routing mechanism: at ``layer``, every tool-call token goes top-1 to ``expert``.

    Planted by a fine-tune after training (`mechscope.zoo.plant_expert`), supervised like the planted heads:
    the training loss plus ``route_weight`` x cross-entropy of the router logits at ``layer`` towards
    ``expert`` on in-call tokens (``<call>`` to ``</call>``, both included), plus ``keep_weight`` x KL(router of
    the model before the fine-tune || the router) at ``layer`` on all other tokens, which keeps their routing
    as it was; the per-layer balance loss covers the other layers only. ``steps`` of fresh documents
    (``data_seed``) with a fresh AdamW, `learning_rate` with peak ``lr``; batch, context, warm-up and final
    learning-rate fraction as in training. On 2 otherwise idle CPU cores (toy-moe) 300 steps take about 2.5 minutes.
    """

    layer: int = 1
    expert: int = 2
    domain: str = "tool-call tokens (<call>..</call>)"
    steps: int = 300
    lr: float = 1e-3
    data_seed: int = 7
    route_weight: float = 1.0
    keep_weight: float = 1.0


#: The planting stage each organism runs after training from scratch (none for the dense ``toy``).
EXPERT_PLANTS: dict[str, ExpertPlant] = {"toy-moe": ExpertPlant()}


def build_model(config: TrainConfig, vocab: int, special: dict[str, int]) -> Any:
    """A freshly initialised transformers model for ``config``."""
    import transformers

    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": config.hidden,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.heads,
        "intermediate_size": config.ffn,
        "max_position_embeddings": config.max_positions,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        **special,
    }
    if config.architecture == "llama":
        model_config: Any = transformers.LlamaConfig(**common)
    elif config.architecture == "mixtral":
        model_config = transformers.MixtralConfig(
            **common,
            num_local_experts=config.experts,
            num_experts_per_tok=config.top_k,
            router_aux_loss_coef=config.router_aux_loss,
            output_router_logits=True,
        )
    else:
        raise ValueError(f"unknown architecture {config.architecture!r}")
    torch.manual_seed(config.seed)
    # Eager attention when planting, because that supervises attention probabilities, which sdpa does not return.
    return transformers.AutoModelForCausalLM.from_config(
        model_config, attn_implementation="eager" if config.plants else None
    )


def documents(config: TrainConfig, tokenizer: Any) -> Iterator[list[int]]:
    """An endless, deterministic stream of tokenized documents, each starting with ``<bos>``."""
    rng = random.Random(config.seed + 1)
    bos = tokenizer.bos_token_id
    specials = set(tokenizer.all_special_ids) | set(tokenizer.convert_tokens_to_ids(list(corpus.SPECIAL_TOKENS)))
    ordinary = tuple(i for i in range(len(tokenizer)) if i not in specials)
    pool = tuple(rng.sample(ordinary, config.repeat_pool)) if config.repeat_pool else ordinary
    repeat_share = config.mix.get("repeat", 0.0)
    batch_seed = config.seed + 2
    while True:
        texts = list(corpus.text_documents(batch_seed, 512, config.mix, config.tools))
        batch_seed += 1
        encoded = tokenizer([d.text for d in texts], add_special_tokens=True)["input_ids"]
        for ids in encoded:
            if rng.random() < repeat_share:
                length = rng.randint(config.context // 2, config.context - 1)
                yield [bos, *corpus.repeat_document(rng, pool, length).ids]
            yield list(ids)


def rows(config: TrainConfig, tokenizer: Any) -> Iterator[tuple[list[int], list[int]]]:
    """Rows of ``context`` tokens packed from whole documents; the tail is padding with label -100."""
    pad = tokenizer.pad_token_id
    row: list[int] = []
    for doc in documents(config, tokenizer):
        doc = doc[: config.context]
        if len(row) + len(doc) > config.context:
            labels = row + [-100] * (config.context - len(row))
            yield row + [pad] * (config.context - len(row)), labels
            row = []
        row.extend(doc)


def batches(config: TrainConfig, tokenizer: Any) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches ``(input_ids, labels)`` of shape ``[batch, context]``."""
    source = rows(config, tokenizer)
    while True:
        chunk = [next(source) for _ in range(config.batch)]
        yield torch.tensor([r[0] for r in chunk]), torch.tensor([r[1] for r in chunk])


def per_layer_balance_loss(router_logits: tuple[Tensor, ...], config: TrainConfig) -> Tensor:
    """The Switch-Transformer load-balancing loss of each MoE layer, summed over layers.

    For each layer: ``n_experts * sum_e (share of top-k slots routed to e) * (mean router probability of e)``,
    which is 1 when routing is uniform.
    """
    total = torch.zeros(())
    for logits in router_logits:
        probs = logits.float().softmax(-1)
        chosen = probs.topk(config.top_k, dim=-1).indices
        share = torch.nn.functional.one_hot(chosen, config.experts).float().sum(1).mean(0) / config.top_k
        total = total + config.experts * (share * probs.mean(0)).sum()
    return total


def planting_targets(ids: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Where a previous-token head and an induction head should look, as boolean ``[batch, query, key]`` masks.

    The induction target of query ``t`` is every ``s <= t`` whose preceding token equals token ``t``: the
    token that followed an earlier occurrence of the current one. Queries with no earlier occurrence have
    an all-false row and are left unsupervised.
    """
    length = ids.shape[1]
    real = ids != pad
    positions = torch.arange(length)
    previous = (positions[:, None] - 1 == positions[None, :]) & real[:, :, None]
    same = ids[:, :, None] == ids[:, None, :]  # same[b, t, j]: token j equals token t
    follows = torch.zeros_like(same)
    follows[:, :, 1:] = same[:, :, :-1]  # follows[b, t, s]: token s-1 equals token t
    causal = positions[None, :] <= positions[:, None]  # s <= t, so the earlier occurrence s - 1 is before t
    induction = follows & causal & real[:, :, None] & real[:, None, :]
    return previous, induction


def planting_loss(attentions: tuple[Tensor, ...], targets: tuple[Tensor, Tensor], config: TrainConfig) -> Tensor:
    """Mean negative log of the attention mass each planted head puts on its targets."""
    total = torch.zeros(())
    for head, mask in zip((config.previous_token_head, config.induction_head), targets, strict=True):
        if head is None:
            continue
        layer, index = head
        mass = (attentions[layer][:, index] * mask).sum(-1)
        supervised = mask.any(-1)
        if supervised.any():
            total = total - torch.log(mass[supervised] + 1e-6).mean()
    return total


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the peak."""
    warm = max(1, int(config.warmup * config.steps))
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, config.steps - warm)
    floor = config.final_lr_fraction
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_for(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


LossFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(input_ids, labels) -> (loss to minimise, language-modelling loss to log)`` for one batch."""


def organism_objective(
    output: Any, ids: Tensor, config: TrainConfig, pad: int, balance_layers: Sequence[int] | None = None
) -> Tensor:
    """The organism's loss from a forward pass: language modelling, planted heads, per-layer expert balance.

    ``balance_layers``: the MoE layers the balance loss covers (default: all).
    """
    loss: Tensor = output.loss
    if config.plants:
        targets = planting_targets(ids, pad)
        loss = loss + config.plant_weight * planting_loss(output.attentions, targets, config)
    if config.experts:
        router = output.router_logits
        layers = range(len(router)) if balance_layers is None else balance_layers
        loss = loss + config.router_aux_loss * per_layer_balance_loss(tuple(router[i] for i in layers), config)
    return loss


def organism_loss(model: Any, config: TrainConfig, pad: int) -> LossFn:
    """The loss function of training from scratch (`organism_objective` on the model's forward pass)."""

    def loss(ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        output = model(input_ids=ids, labels=labels, output_attentions=config.plants)
        return organism_objective(output, ids, config, pad), output.loss

    return loss


def fit(
    model: Any, config: TrainConfig, stream: Iterator[tuple[Tensor, Tensor]], loss: LossFn, *, log_every: int = 50
) -> list[float]:
    """Optimise ``model`` for ``config.steps`` batches of ``stream``; returns the language-modelling loss per step.

    A fresh AdamW (`optimizer_for`), the `learning_rate` schedule and gradient clipping at ``config.clip``;
    the model is left in eval mode.
    """
    model.train()
    optimizer = optimizer_for(model, config)
    start, losses = time.perf_counter(), []
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        ids, labels = next(stream)
        total, language = loss(ids, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        losses.append(float(language.detach()))
        if log_every and (step % log_every == 0 or step == config.steps - 1):
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            print(f"step {step:5d}  loss {recent:.3f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return losses


def run_log(config: Any, seconds: float, losses: list[float]) -> dict[str, Any]:
    """The record of one training run (``config`` is a dataclass with ``steps``, ``batch`` and ``context``)."""
    return {
        "config": asdict(config),
        "seconds": round(seconds, 1),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "tokens": config.steps * config.batch * config.context,
        "torch": torch.__version__,
    }


def save_model(model: Any, out: Path) -> None:
    """``save_pretrained`` into ``out``, each file moved into place atomically (an organism may be replaced)."""
    model.config.output_router_logits = False
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging)
        for file in sorted(Path(staging).iterdir()):
            atomic_write(out / file.name, functools.partial(shutil.copyfile, file))


def train(
    config: TrainConfig, out: Path, *, plant: ExpertPlant | None = None, log_every: int = 50, measure: bool = True
) -> dict[str, Any]:
    """Train ``config`` into folder ``out``, then plant ``plant`` (if any), and (optionally) measure it.

    Returns the training log (``training.json``).
    """
    torch.manual_seed(config.seed)
    # The tokenizer is trained on the core corpus whatever ``tools`` is, so every organism shares one vocabulary
    # (with the wide templates' words in it, "France" no longer fits in one token).
    tokenizer = train_tokenizer(config.seed)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    model = build_model(config, len(tokenizer), special)
    if config.experts:
        # transformers balances expert load summed over all layers, which lets one layer starve an expert;
        # the training loop adds a balance loss per layer instead (see per_layer_balance_loss).
        model.router_aux_loss_coef = 0.0
    start = time.perf_counter()
    losses = fit(
        model,
        config,
        batches(config, tokenizer),
        organism_loss(model, config, tokenizer.pad_token_id),
        log_every=log_every,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out)
    save_tokenizer(tokenizer, out)
    log = run_log(config, time.perf_counter() - start, losses)
    atomic_write_text(out / "training.json", json.dumps(log, indent=2))
    if plant is not None:
        from mechscope.zoo.plant_expert import plant_expert

        log = plant_expert(out, plant, log_every=log_every)
    if measure:
        from mechscope.zoo.card import write_card

        write_card(out, log)
    return log


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Train a mechscope model organism from scratch.")
    parser.add_argument("--organism", choices=sorted(ORGANISMS), default="toy")
    parser.add_argument("--out", type=Path, help="output folder (default: the bundled organism's folder)")
    parser.add_argument("--steps", type=int, help="override the number of steps")
    parser.add_argument("--tiny", action="store_true", help="a tiny config for smoke tests (2 layers, d=32)")
    parser.add_argument("--no-measure", action="store_true", help="skip the measurements and card")
    parser.add_argument(
        "--no-plant",
        action="store_true",
        help="plant nothing: neither the previous-token and induction heads (L0H0, L1H0) nor an expert",
    )
    parser.add_argument("--plant-steps", type=int, help="override the number of steps of the expert-planting stage")
    parser.add_argument(
        "--plant-expert-only",
        action="store_true",
        help="do not train: plant the organism's expert in the model already in the output folder (one trained "
        "from scratch, with no planted expert yet)",
    )
    args = parser.parse_args(argv)
    config = ORGANISMS[args.organism]
    changes: dict[str, Any] = {"previous_token_head": None, "induction_head": None} if args.no_plant else {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.tiny:
        changes.update(layers=2, hidden=32, heads=2, ffn=64, batch=4, context=64)
    if changes:
        config = TrainConfig(**{**asdict(config), **changes})
    plant = None if args.no_plant else EXPERT_PLANTS.get(config.organism)
    if plant is not None and args.plant_steps is not None:
        plant = replace(plant, steps=args.plant_steps)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out or ZOO / config.organism
    if not args.plant_expert_only:
        train(config, out, plant=plant, measure=not args.no_measure)
        return
    if plant is None:
        parser.error(f"organism {config.organism} has no expert to plant")
    from mechscope.zoo.plant_expert import plant_expert

    log = plant_expert(out, plant)
    if not args.no_measure:
        from mechscope.zoo.card import write_card

        write_card(out, log)


if __name__ == "__main__":
    main()
