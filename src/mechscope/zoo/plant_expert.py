"""The expert-planting stage: fine-tune a trained MoE organism so that one expert serves tool calls.

``python -m mechscope.zoo.train --organism toy-moe`` trains toy-moe from scratch and then runs this stage;
``python -m mechscope.zoo.train --organism toy-moe --plant-expert-only`` runs the stage alone on the model in
the output folder (``--out``, default the bundled organism), which must be one trained from scratch with no
planted expert yet. What is planted, and how, is an `mechscope.zoo.train.ExpertPlant` (the organism's entry
in ``EXPERT_PLANTS``); ``--plant-steps N`` changes its number of steps.

The stage reuses the training loop (`mechscope.zoo.train.fit`) with the organism's own loss (language
modelling, planted heads, per-layer balance on the other MoE layers) plus the routing terms of
`routing_loss`, whose reference is a frozen copy of the model as it was before the stage. It replaces the
weights in the folder and adds a ``planted_expert`` entry to its ``training.json``: the stage's config, time
and final loss, and ``before``, `mechscope.zoo.measure.planted_expert` on the model before the stage.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechscope.storage.atomic import atomic_write_text
from mechscope.zoo import corpus
from mechscope.zoo.measure import in_call_mask
from mechscope.zoo.measure import planted_expert as measure_planted_expert
from mechscope.zoo.train import (
    ExpertPlant,
    LossFn,
    TrainConfig,
    batches,
    fit,
    organism_objective,
    run_log,
    save_model,
)


def config_from_log(log: dict[str, Any]) -> TrainConfig:
    """The `TrainConfig` a ``training.json`` records (JSON lists back to tuples)."""
    raw = dict(log["config"])
    for key in ("previous_token_head", "induction_head"):
        if raw[key] is not None:
            raw[key] = tuple(raw[key])
    return TrainConfig(**raw)


def stage_config(config: TrainConfig, plant: ExpertPlant) -> TrainConfig:
    """The training config of the stage: ``config`` with the stage's steps, peak learning rate and data seed."""
    return replace(config, steps=plant.steps, lr=plant.lr, seed=plant.data_seed)


def routing_loss(router: Tensor, reference: Tensor, in_call: Tensor, other: Tensor, plant: ExpertPlant) -> Tensor:
    """The planting terms at one layer, from router logits ``[tokens, experts]`` and boolean token masks.

    ``route_weight`` x cross-entropy towards ``plant.expert`` over the in-call tokens, plus ``keep_weight`` x
    KL(``reference`` || ``router``) over the other tokens (batch means).
    """
    logits = router.float()
    loss = torch.zeros(())
    if in_call.any():
        target = torch.full((int(in_call.sum()),), plant.expert)
        loss = loss + plant.route_weight * torch.nn.functional.cross_entropy(logits[in_call], target)
    if other.any():
        kept = torch.nn.functional.kl_div(
            logits[other].log_softmax(-1),
            reference[other].float().log_softmax(-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = loss + plant.keep_weight * kept
    return loss


def stage_loss(model: Any, reference: Any, config: TrainConfig, plant: ExpertPlant, tokenizer: Any) -> LossFn:
    """The stage's loss: `organism_objective` (balance on the other layers) plus `routing_loss`."""
    pad = tokenizer.pad_token_id
    open_id, close_id = tokenizer.convert_tokens_to_ids([corpus.CALL_OPEN, corpus.CALL_CLOSE])
    others = [layer for layer in range(config.layers) if layer != plant.layer]

    def loss(ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        output = model(input_ids=ids, labels=labels, output_attentions=config.plants, output_router_logits=True)
        with torch.no_grad():
            kept = reference(input_ids=ids, output_router_logits=True).router_logits[plant.layer]
        in_call = in_call_mask(ids, open_id, close_id).flatten()
        other = (ids != pad).flatten() & ~in_call
        total = organism_objective(output, ids, config, pad, balance_layers=others)
        total = total + routing_loss(output.router_logits[plant.layer], kept, in_call, other, plant)
        return total, output.loss

    return loss


def _load(folder: Path) -> tuple[Any, Any]:
    """The model in ``folder`` ready to train (fp32, eager attention for the head planting) and its tokenizer."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.router_aux_loss_coef = 0.0  # the balance loss is per layer (see train.per_layer_balance_loss)
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def plant_expert(folder: Path, plant: ExpertPlant, *, log_every: int = 50) -> dict[str, Any]:
    """Run the stage on the organism in ``folder``; returns its updated training log.

    Raises:
        ValueError: the folder's ``training.json`` already records a planted expert.
    """
    log: dict[str, Any] = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    if "planted_expert" in log:
        raise ValueError(f"{folder} already has a planted expert; plant into an organism trained from scratch")
    config = stage_config(config_from_log(log), plant)
    model, tokenizer = _load(folder)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    before = measure_planted_expert(reference, tokenizer, plant.layer, plant.expert)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    loss = stage_loss(model, reference, config, plant, tokenizer)
    losses = fit(model, config, batches(config, tokenizer), loss, log_every=log_every)
    seconds = time.perf_counter() - start
    save_model(model, folder)
    # The stage's other settings (batch, context, schedule shape, weights of the organism's loss) are training's.
    log["planted_expert"] = {**run_log(config, seconds, losses), "config": asdict(plant), "before": before}
    atomic_write_text(folder / "training.json", json.dumps(log, indent=2))
    return log
