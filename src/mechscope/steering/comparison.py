"""Compare a trained steering vector with the activation-averaged (difference-of-means) vector of the same trait.

For every layer (or the ``layers`` given; the trained layer is always included) the difference of means of
``positive`` minus ``negative`` prompts at ``resid_post`` (`diff_of_means`, mean over positions), its norm and
its cosine with the trained vector. The trained vector lives at one layer, but the residual stream's basis is
shared across layers, so the cosine is defined at each; the trained layer is marked.

Validation perplexity is measured on the trained run's own validation split, re-made from its data with the
run's ``val_tokens``, ``seed`` and ``max_length`` (the data's SHA-256 must match the one in ``config.json``),
for: the vanilla model; the trained vector; the difference-of-means vector of the trained layer at its own
norm; and that vector rescaled to the trained vector's norm (same strength, only the direction differs). Each
vector is added at the trained layer and at the run's ``positions``, exactly as training measured it.

Examples:
    >>> import mechscope as ms
    >>> from mechscope.steering.trainer import train
    >>> lm = ms.load("toy")
    >>> data = [{"prompt": "", "completion": " Arr matey, the sea be grand!"}] * 4
    >>> run = train(lm, data, layer=2, epochs=1, lr=0.1, val_tokens=1, batch_size=2)
    >>> result = compare_vectors(lm, run.steering_vector(), ["<pirate> The sea."], ["<formal> The sea."], data=data)
    >>> len(result.layers) == lm.arch.n_layers, result.trained_ppl < result.vanilla_ppl
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechscope.core.layers import resolve_layer, resolve_layers
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.steering.compare_results import LayerComparison, VectorComparison
from mechscope.steering.directions import diff_of_means
from mechscope.steering.train_data import Record, TrainData, load_data
from mechscope.steering.train_state import frozen, layer_device, ppl
from mechscope.steering.trainer import _nll
from mechscope.steering.vector import SteeringVector

Data = str | Path | Sequence[Record]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors in float64 (0.0 when either is zero)."""
    x, y = a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten()
    denominator = float(x.norm() * y.norm())
    return float(x @ y) / denominator if denominator > 0 else 0.0


def recorded_data(config: dict[str, Any]) -> str | None:
    """The training data path a run's ``config.json`` records (None when it records none)."""
    training = config.get("training") or {}
    for value in (config.get("data_path"), training.get("data_path"), training.get("data")):
        if isinstance(value, str) and value:
            return value
    return None


def validation_data(lm: LanguageModel, vector: SteeringVector, data: Data | None) -> tuple[TrainData, str | None]:
    """The trained run's validation split, re-made from ``data`` (default: the path its config records).

    Raises:
        InputError: no data is given or recorded, the file is gone, or its hash differs from the run's.
    """
    config, training = vector.config, vector.config.get("training") or {}
    given = data if data is not None else recorded_data(config)
    if given is None:
        raise InputError("the run's config.json records no training data path; give the data with --data")
    if isinstance(given, str | Path) and not Path(given).is_file():
        raise InputError(f"the training data '{given}' is gone; give the run's data with --data")
    options = {
        "val_tokens": int(training.get("val_tokens", 10_000)),
        "seed": int(training.get("seed", 0)),
        "max_length": training.get("max_length"),
    }
    prepared = load_data(lm.tokenizer, given, **options)
    stored = config.get("data_hash")
    if stored and prepared.data_hash != stored:
        raise InputError(
            f"the data's hash {prepared.data_hash[:12]} differs from the run's {str(stored)[:12]}; "
            "give the data the vector was trained on with --data"
        )
    return prepared, str(given) if isinstance(given, str | Path) else None


def compare_vectors(
    lm: LanguageModel,
    trained: SteeringVector | str | Path,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    data: Data | None = None,
    batch_size: int | None = None,
) -> VectorComparison:
    """Cosine and norms per layer, and validation perplexities, of a trained vector vs the difference of means.

    Args:
        trained: a `SteeringVector` or its run folder (checked against ``lm``).
        positive / negative: prompts with and without the trait (the difference of means, mean over positions).
        layers: where to compute the difference of means (default every layer; the trained layer is added).
        data: the training data (file or records) when the run's config records no path, or to override it.
        batch_size: examples per forward pass for the perplexities (default the run's).

    Examples:
        A vector trained briefly on pirate completions, read back from its run folder: its config records
        the data file, so the validation split is re-made from it. The trained vector lowers the validation
        perplexity far more than the difference of means does, at its own norm or rescaled to the trained one:

        >>> import json, tempfile
        >>> from pathlib import Path
        >>> import mechscope as ms
        >>> from mechscope.steering.trainer import train
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> folder = Path(tempfile.mkdtemp())
        >>> lines = [json.dumps({"prompt": "", "completion": f" Arr matey, {t} be grand!"}) for t in topics]
        >>> _ = (folder / "pirate.jsonl").write_text("\\n".join(lines) + "\\n")
        >>> _ = train(lm, folder / "pirate.jsonl", layer=2, out=folder / "run", epochs=2, lr=0.5, val_tokens=6,
        ...           batch_size=2)
        >>> result = compare_vectors(lm, folder / "run", [f"<pirate> Tell me about {t}." for t in topics],
        ...                          [f"<formal> Tell me about {t}." for t in topics], layers=[0])
        >>> [(row.layer, row.trained_layer, round(row.cosine, 2)) for row in result.layers]
        [(0, False, 0.12), (2, True, 0.22)]
        >>> [round(p) for p in (result.vanilla_ppl, result.trained_ppl, result.diff_ppl, result.diff_rescaled_ppl)]
        [1581, 174, 1090, 1142]

    Raises:
        InputError: an empty prompt set, no or other training data.
        ModelLoadError: the vector does not fit ``lm`` (one line).
    """
    vector = trained if isinstance(trained, SteeringVector) else SteeringVector.from_pretrained(trained, lm)
    vector.check(lm)
    if not positive or not negative:
        raise InputError("the comparison needs at least one positive and one negative prompt")
    chosen = resolve_layers(layers, lm.arch.n_layers)
    own = resolve_layer(vector.layer, lm.arch.n_layers)
    if own not in chosen:
        chosen = sorted([*chosen, own])
    prepared, data_name = validation_data(lm, vector, data)
    directions = diff_of_means(lm, positive, negative, layers=chosen)
    trained_vector = vector.vector.detach().float().cpu()
    rows = [
        LayerComparison(
            layer=layer,
            cosine=cosine(trained_vector, directions[layer].vector),
            diff_norm=float(directions[layer].vector.double().norm()),
            trained_layer=layer == own,
        )
        for layer in chosen
    ]
    training = vector.config.get("training") or {}
    positions = str(training.get("positions", vector.config.get("positions", "all")))
    args = {"layer": own, "positions": positions, "amp": training.get("amp", "bf16")}
    args["batch_size"] = int(batch_size or training.get("batch_size", 8))
    diff = directions[own].vector.float().cpu()
    norm = float(trained_vector.norm())
    rescaled = diff * (norm / float(diff.norm())) if float(diff.norm()) > 0 else diff
    losses: dict[str, float | None] = dict.fromkeys(("vanilla", "trained", "diff", "rescaled"))
    if prepared.val:
        with frozen(lm, checkpointing=False):
            for name, added in (("vanilla", None), ("trained", trained_vector), ("diff", diff), ("rescaled", rescaled)):
                on_device = None if added is None else added.to(layer_device(lm, own))
                losses[name] = _nll(lm, prepared.val, on_device, args)
    return VectorComparison(
        model=lm.source,
        trained_dir=vector.config.get("run_dir"),
        trained_layer=own,
        trained_norm=norm,
        site=vector.site,
        positions=positions,
        positive=len(positive),
        negative=len(negative),
        data=data_name,
        data_hash=prepared.data_hash or None,
        val_examples=prepared.stats.val_examples,
        val_loss_tokens=prepared.stats.val_loss_tokens,
        vanilla_ppl=ppl(losses["vanilla"]),
        trained_ppl=ppl(losses["trained"]),
        diff_ppl=ppl(losses["diff"]),
        diff_rescaled_ppl=ppl(losses["rescaled"]),
        layers=rows,
    )
