"""Search layer x scale for the steering vector that best turns held-out answers to a trait and stays fluent.

**What runs.** On one loaded model: for each layer of ``layers`` (``"all"`` or a list; negative counts from
the end) a vector is trained on ``data`` with `mechscope.steering.trainer.train` (the data tokenized and split
once, the vanilla and prompted validation losses measured once and passed to every run, as in ``lr_sweep``),
unless ``vectors`` gives one per layer. Then one `mechscope.steering.rollout.rollouts` call generates answers
to ``questions`` for the vanilla model, the prompted baseline (when ``rollout_options`` names a persona) and
every layer x scale (scales as in ``rollouts``: ``learned`` and numbers, optionally normalised), all with the
same seeds; `mechscope.steering.scoring.score_rollouts` scores them with ``classifier`` (trained on labelled
examples disjoint from the rollouts; `EmbeddingClassifier` checks) and measures fluency under the vanilla model.

**Combination of trait score and fluency.** A candidate's score is its *gain*: the mean per-question
difference of classifier score from vanilla, with its paired bootstrap CI. It counts only if the candidate is
fluent (perplexity ratio to vanilla at most ``max_perplexity_ratio``, 3 by default); otherwise it is excluded.
Eligible candidates are ranked by the gain's CI lower bound, ties by fluency (see
`mechscope.steering.search_results.rank_candidates`). Every candidate is reported, next to the prompted
baseline's gain, so a reader sees whether steering beats simply prompting the model.

Example (tiny training on the toy organism; the classifier here is a stand-in keyword scorer):
    >>> import mechscope as ms
    >>> from mechscope.zoo import corpus
    >>> class Marker:
    ...     def score(self, texts):
    ...         return [float(corpus.style_of(t) == "pirate") for t in texts]
    >>> lm = ms.load("toy")
    >>> data = [{"prompt": "", "completion": " Arr matey, the sea be grand!"}] * 4
    >>> found = search(lm, data, ["<user> Tell me about the river. <assistant>"], Marker(), layers=[2],
    ...                scales=["learned"], train_options={"epochs": 1, "val_tokens": 1},
    ...                rollout_options={"max_new_tokens": 4, "temperature": 0})
    >>> [c.condition for c in found.candidates]
    ['L2@learned']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechscope.core.direction import Direction
from mechscope.core.layers import resolve_layer
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.steering.rollout import Scale, parse_scale, rollouts, scale_label
from mechscope.steering.rollout_results import RolloutEvaluation
from mechscope.steering.scoring import Judge, Scorer, score_rollouts
from mechscope.steering.search_results import LayerTraining, SearchCandidate, SteeringSearch, rank_candidates
from mechscope.steering.train_data import Record, TrainData, load_data
from mechscope.steering.trainer import train

#: ``train_options`` that shape the data (tokenized and split once for every layer).
DATA_OPTIONS = ("val_tokens", "seed", "prompted_prefix", "max_length")
#: Options the search sets itself.
_RESERVED_TRAIN = ("layer", "out", "resume", "baselines", "progress")
_RESERVED_ROLLOUT = ("scales", "progress")


def resolve_layers(layers: str | int | Sequence[int], n_layers: int) -> list[int]:
    """``"all"``, one layer or a list (negatives count from the end) -> sorted distinct layer indices.

    Raises:
        InputError: an empty list or another string; SiteError: a layer outside the model.
    """
    if isinstance(layers, str):
        if layers.strip().lower() != "all":
            raise InputError(f"unknown layers '{layers}'; use all or a list of layer numbers")
        return list(range(n_layers))
    chosen = [layers] if isinstance(layers, int) else list(layers)
    if not chosen:
        raise InputError("give at least one layer to search (or all)")
    return sorted({resolve_layer(int(layer), n_layers) for layer in chosen})


def vector_name(layer: int) -> str:
    """The name of a layer's vector in the rollouts: ``L2``."""
    return f"L{layer}"


def search(
    lm: LanguageModel,
    data: str | Path | Sequence[Record] | None,
    questions: Sequence[str],
    classifier: Scorer,
    *,
    layers: str | int | Sequence[int] = "all",
    scales: Sequence[Scale] = ("learned",),
    vectors: Mapping[int, Direction] | None = None,
    train_options: Mapping[str, Any] | None = None,
    rollout_options: Mapping[str, Any] | None = None,
    max_perplexity_ratio: float = 3.0,
    judge: Judge | None = None,
    reps: int = 1000,
    dataset: str = "questions",
    progress: bool = False,
) -> SteeringSearch:
    """Train (or take) one vector per layer, roll out every layer x scale, and rank them (module docstring).

    Args:
        data: the training data of `train` (file or records); None when ``vectors`` gives every layer.
        vectors: layer -> a vector to use there instead of training one (its layer must match).
        train_options: keyword arguments of `train` (``epochs``, ``lr``, ``val_tokens``, ``prompted_prefix``...).
        rollout_options: keyword arguments of `rollouts` (``normalize``, ``rollouts``, ``max_new_tokens``,
            ``temperature``, ``prompted_suffix``...).

    Examples:
        Difference-of-means vectors given for layers 1 and 2 (nothing to train), two scales each, next to the
        prompted baseline. The toy's vanilla answers are memorised, so any other text is far less likely under
        the vanilla model: the example allows a perplexity ratio of 30 (the default, 3, excludes every one):

        >>> import mechscope as ms
        >>> from mechscope.steering.directions import diff_of_means
        >>> from mechscope.zoo import corpus
        >>> class Marker:  # a stand-in classifier: 1.0 for pirate talk
        ...     def score(self, texts):
        ...         return [float(corpus.style_of(t) == "pirate") for t in texts]
        >>> lm = ms.load("toy")
        >>> topics = ["the sea", "the ship", "the weather", "the town"]
        >>> vectors = diff_of_means(lm, [f"<pirate> Tell me about {t}." for t in topics],
        ...                         [f"<formal> Tell me about {t}." for t in topics], layers=[1, 2])
        >>> found = search(lm, None, ["<formal> Tell me about the sea.", "<formal> Tell me about the ship."], Marker(),
        ...                vectors=vectors, scales=[1.0, 2.0], max_perplexity_ratio=30,
        ...                rollout_options={"max_new_tokens": 6, "temperature": 0, "prompted_suffix": " <pirate>"})
        >>> [(c.condition, c.rank, round(c.perplexity_ratio), c.success) for c in found.candidates]
        [('L1@1', 1, 22, True), ('L1@2', None, 39, False), ('L2@1', 2, 6, False), ('L2@2', None, 1394, False)]
        >>> found.best.condition, found.prompted_gain.mean, round(found.prompted_perplexity_ratio, 1)
        ('L1@1', 1.0, 1.3)

    Raises:
        InputError: no layers or scales, no data for a layer to train, a bad option, or (from the classifier)
            rollouts that overlap its training data.
    """
    given = dict(vectors or {})
    for layer, direction in given.items():
        if direction.layer != layer:
            raise InputError(f"the vector given for layer {layer} is for layer {direction.layer}")
    everything = isinstance(layers, str) and layers.strip().lower() == "all"
    chosen_layers = sorted(given) if given and everything else resolve_layers(layers, lm.arch.n_layers)
    chosen_scales = [parse_scale(s) for s in scales]
    if not chosen_scales:
        raise InputError("give at least one scale to search (learned or a number)")
    if not math.isfinite(max_perplexity_ratio) or max_perplexity_ratio <= 0:
        raise InputError(f"max-perplexity-ratio must be a positive number, got {max_perplexity_ratio}")
    t_options = dict(train_options or {})
    r_options = dict(rollout_options or {})
    for reserved, options, what in ((_RESERVED_TRAIN, t_options, "train"), (_RESERVED_ROLLOUT, r_options, "rollout")):
        clash = [key for key in reserved if key in options]
        if clash:
            raise InputError(f"the search sets {', '.join(clash)} itself; leave it out of the {what} options")
    to_train = [layer for layer in chosen_layers if layer not in given]
    training = [
        LayerTraining(layer=layer, source="given", norm=float(given[layer].vector.float().norm()))
        for layer in chosen_layers
        if layer in given
    ]
    directions = {layer: given[layer] for layer in chosen_layers if layer in given}
    if to_train:
        if data is None:
            raise InputError(f"no vector given for layer(s) {', '.join(map(str, to_train))}; give training data")
        trained = _train_layers(lm, data, to_train, t_options, progress)
        for layer, (direction, record) in trained.items():
            directions[layer] = direction
            training.append(record)
    training.sort(key=lambda record: record.layer)
    named = {vector_name(layer): directions[layer] for layer in chosen_layers}
    generated = rollouts(lm, questions, named, scales=chosen_scales, dataset=dataset, progress=progress, **r_options)
    evaluation = score_rollouts(
        generated, classifier, lm=lm, judge=judge, max_perplexity_ratio=max_perplexity_ratio, reps=reps
    )
    return _result(lm, evaluation, chosen_layers, chosen_scales, training, max_perplexity_ratio)


def _train_layers(
    lm: LanguageModel,
    data: str | Path | Sequence[Record],
    layers: Sequence[int],
    options: dict[str, Any],
    progress: bool,
) -> dict[int, tuple[Direction, LayerTraining]]:
    """One `train` run per layer on data tokenized once; the baselines measured by the first run only."""
    data_options: dict[str, Any] = {"val_tokens": 10_000}  # train's default
    data_options.update({key: options[key] for key in DATA_OPTIONS if key in options})
    prepared: TrainData = load_data(lm.tokenizer, data, **data_options)
    baselines: tuple[float | None, float | None] | None = None
    out: dict[int, tuple[Direction, LayerTraining]] = {}
    for layer in layers:
        result = train(lm, prepared, layer=layer, progress=progress, baselines=baselines, **options)
        if baselines is None and result.vanilla_ppl is not None:
            prompted = math.log(result.prompted_ppl) if result.prompted_ppl is not None else None
            baselines = (math.log(result.vanilla_ppl), prompted)
        record = LayerTraining(
            layer=layer,
            source="trained",
            norm=result.norm,
            vanilla_ppl=result.vanilla_ppl,
            prompted_ppl=result.prompted_ppl,
            steered_ppl=result.steered_ppl,
        )
        out[layer] = (result.steering_vector().direction, record)
    return out


def _result(
    lm: LanguageModel,
    evaluation: RolloutEvaluation,
    layers: list[int],
    scales: list[str | float],
    training: list[LayerTraining],
    max_ratio: float,
) -> SteeringSearch:
    norms = {record.layer: record.norm for record in training}
    candidates = []
    for layer in layers:
        for scale in scales:
            summary = evaluation.condition(f"{vector_name(layer)}@{scale_label(scale)}")
            candidates.append(
                SearchCandidate(
                    layer=layer,
                    scale=summary.scale,
                    condition=summary.condition,
                    score=summary.score,
                    gain=summary.delta_vs_vanilla,
                    perplexity_ratio=summary.perplexity_ratio,
                    fluent=summary.fluent,
                    success=summary.success,
                    norm=norms.get(layer),
                )
            )
    names = {s.condition for s in evaluation.summary}
    prompted = evaluation.condition("prompted") if "prompted" in names else None
    return SteeringSearch(
        model=lm.source,
        dataset=evaluation.dataset,
        layers=layers,
        scales=[scale_label(s) for s in scales],
        max_perplexity_ratio=max_ratio,
        vanilla_score=evaluation.condition("vanilla").score,
        prompted_gain=None if prompted is None else prompted.delta_vs_vanilla,
        prompted_perplexity_ratio=None if prompted is None else prompted.perplexity_ratio,
        candidates=rank_candidates(candidates),
        training=training,
        settings=evaluation.settings,
    )
