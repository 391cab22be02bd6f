"""The analyses the CLI offers, each as one function of a loaded model that returns the library's result.

These are the operations `Analyzer` serialises on one model: thin calls into the analysis packages with
the CLI's defaults, so that the Python front, the CLI and the web app compute the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mechscope.attention.results import HeadRoles, LayerAttention
from mechscope.causal.ablation import Ablator
from mechscope.causal.results import AblationResult, AttributionResult, PatchingResult
from mechscope.checks.doctor import DoctorReport
from mechscope.core.direction import Direction
from mechscope.core.lm import LanguageModel
from mechscope.lens.results import Comparison, LensGrid, LensResult
from mechscope.lens.tuned import TunedLens
from mechscope.steering.generate import Phase, SteeringSweep
from mechscope.weights.export import ParamRow


def lens(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    position: int = -1,
    top_k: int = 5,
    track: Sequence[str] = (),
    tuned: TunedLens | None = None,
) -> list[LensResult]:
    """The logit (or tuned) lens on each prompt at ``position``: one `LensResult` per prompt."""
    from mechscope.lens.logit import LogitLens

    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    return LogitLens(lm, tuned).run(batch, layers=layers, position=position, top_k=top_k, track=track)


def lens_grid(
    lm: LanguageModel,
    prompt: str,
    *,
    layers: Sequence[int] | None = None,
    top_k: int = 3,
    tuned: TunedLens | None = None,
) -> LensGrid:
    """The lens at every position of ``prompt`` (the heatmap of the lens report)."""
    from mechscope.lens.logit import LogitLens

    return LogitLens(lm, tuned).grid(prompt, layers=layers, top_k=top_k)


def compare(lm: LanguageModel, other: LanguageModel, prompt: str) -> Comparison:
    """``lm``'s layer-by-layer predictions against ``other``'s on the same prompt."""
    from mechscope.lens.compare import compare as compare_models

    return compare_models(lm, other, prompt)


def fit_tuned_lens(
    lm: LanguageModel, texts: Sequence[str], *, steps: int = 300, seed: int = 0, progress: bool = False
) -> TunedLens:
    """Train a tuned lens on ``texts`` (the model stays frozen); pass it to `lens` as ``tuned=``."""
    return TunedLens.fit(lm, texts, steps=steps, seed=seed, progress=progress)


def layer_kl(lm: LanguageModel, texts: Sequence[str], *, tuned: TunedLens | None = None) -> list[float]:
    """Per layer, the mean KL to the final distribution over every token of ``texts`` (logit or tuned lens)."""
    from mechscope.lens.tuned import layer_kl as mean_kl

    return mean_kl(lm, texts, tuned)


def attention(
    lm: LanguageModel,
    prompt: str,
    layer: int,
    *,
    head: int | None = None,
    threshold: float = 0.3,
    with_roles: bool = False,
) -> LayerAttention:
    """Where ``layer``'s heads look on ``prompt``: patterns, focus edges, entropy and sink mass."""
    from mechscope.attention.summary import layer_attention

    return layer_attention(lm, prompt, layer, head=head, threshold=threshold, with_roles=with_roles)


def heads(lm: LanguageModel, *, count: int = 32, length: int = 20, seed: int = 0) -> HeadRoles:
    """Every head's previous-token, duplicate-token, induction and copying scores."""
    from mechscope.attention.roles import head_roles

    return head_roles(lm, count=count, length=length, seed=seed)


def patch(
    lm: LanguageModel,
    clean: str,
    corrupted: str,
    *,
    correct: str,
    wrong: str,
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> PatchingResult:
    """Activation patching with the logit difference ``correct`` − ``wrong`` (``progress``: a bar on stderr)."""
    from mechscope.causal import LogitDiff, activation_patching

    metric = LogitDiff(lm, correct=correct, wrong=wrong)
    return activation_patching(lm, clean, corrupted, metric, site=site, layers=layers, progress=progress)


def patch_cell(
    lm: LanguageModel,
    clean: str,
    corrupted: str,
    *,
    layer: int,
    position: int,
    site: str = "resid_post",
    top_k: int = 3,
    track: Sequence[str] = (),
) -> list[LensResult]:
    """What one patching cell changes downstream: the lens of three runs at the last position.

    Returns ``[clean, corrupted, patched]``, where ``patched`` is the corrupted run with ``site`` at
    (``layer``, ``position``) taken from the clean run — one cell of `patch`'s map, with every later
    layer's prediction.

    Raises:
        InputError: the prompts tokenize to different lengths, or ``position`` is outside them.
        SiteError: ``site`` or ``layer`` does not exist on the model.
    """
    import torch

    from mechscope.causal.patching import PATCHABLE
    from mechscope.core import ops
    from mechscope.errors import InputError, SiteError
    from mechscope.lens.logit import LogitLens

    if site not in PATCHABLE:
        raise SiteError(f"cannot patch '{site}' by layer and position; use one of {', '.join(PATCHABLE)}")
    name = str(lm.sites(f"{site}.{layer}")[0])
    clean_ids, corrupted_ids = lm.tokenize([clean])["input_ids"], lm.tokenize([corrupted])["input_ids"]
    length = clean_ids.shape[1]
    if corrupted_ids.shape[1] != length:
        raise InputError(
            f"the clean prompt is {length} tokens and the corrupted one {corrupted_ids.shape[1]}; "
            "patching needs prompts of the same length"
        )
    if not -length <= position < length:
        raise InputError(f"position {position} is outside the prompt's {length} tokens")
    with torch.no_grad():
        with lm.capture([name]) as clean_cache:
            lm.forward(clean_ids)
        with lm.capture([name]) as corrupted_cache:
            lm.forward(corrupted_ids)
    source = corrupted_cache[name].clone()
    source[:, position] = clean_cache[name][:, position]
    lens = LogitLens(lm)
    runs = [lens.run([prompt], top_k=top_k, track=track)[0] for prompt in (clean, corrupted)]
    with lm.intervene({name: ops.set(source)}):
        runs.append(lens.run([corrupted], top_k=top_k, track=track)[0])
    return runs


def attribution(
    lm: LanguageModel,
    clean: str,
    corrupted: str,
    *,
    correct: str,
    wrong: str,
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
) -> AttributionResult:
    """Attribution patching (the gradient estimate of `patch`) with the same metric."""
    from mechscope.causal import LogitDiff, attribution_patching

    metric = LogitDiff(lm, correct=correct, wrong=wrong)
    return attribution_patching(lm, clean, corrupted, metric, site=site, layers=layers)


def ablate(
    lm: LanguageModel,
    prompt: str,
    *,
    component: str = "mlp",
    method: str = "zero",
    target: str | None = None,
    criterion: str | None = None,
    layers: Sequence[int] | None = None,
    reference: Sequence[str] | None = None,
    resample_from: str | None = None,
    max_new_tokens: int = 20,
    progress: bool = False,
    indices: Sequence[int] | None = None,
    ablator: Ablator | None = None,
) -> AblationResult:
    """An ablation sweep measured by the probability of ``target`` or by a text ``criterion``.

    ``criterion`` is ``contains:<text>``, ``regex:<pattern>`` or ``function_call``; ``indices`` and
    ``ablator`` are `mechscope.causal.sweep`'s (some heads or experts; a custom ablation such as the experts').
    """
    from mechscope.causal import TargetProb, parse_criterion, sweep

    return sweep(
        lm,
        prompt,
        component=component,
        method=method,
        metric=TargetProb(lm, target) if target is not None else None,
        criterion=parse_criterion(criterion) if criterion is not None else None,
        layers=layers,
        reference=reference,
        resample_from=resample_from,
        max_new_tokens=max_new_tokens,
        progress=progress,
        indices=indices,
        ablator=ablator,
    )


def generate(lm: LanguageModel, prompts: str | Sequence[str], *, max_new_tokens: int = 32) -> list[str]:
    """Plain greedy continuations of each prompt."""
    return lm.generate([prompts] if isinstance(prompts, str) else list(prompts), max_new_tokens=max_new_tokens)


def steer(
    lm: LanguageModel,
    prompts: str | Sequence[str],
    direction: Direction | str | Path,
    coefficients: Sequence[float] = (0.0, 4.0),
    *,
    normalize: bool = False,
    positions: Phase = "all",
    max_new_tokens: int = 32,
    force: bool = False,
) -> SteeringSweep:
    """Greedy generations with ``direction`` (a `Direction` or its file) added at each coefficient.

    ``force`` applies a direction file computed on another model of the same width.
    """
    from mechscope.steering.generate import sweep

    vector = direction if isinstance(direction, Direction) else Direction.load(direction, lm, force=force)
    options = {"normalize": normalize, "positions": positions, "max_new_tokens": max_new_tokens}
    return sweep(lm, prompts, vector, coefficients, **options)


def directions(
    lm: LanguageModel,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    method: str = "diff_of_means",
) -> dict[int, Direction]:
    """Contrast directions per layer: difference of means, or PCA of the pairs (``method="pca"``)."""
    from mechscope.errors import InputError
    from mechscope.steering.directions import diff_of_means, pca_of_differences

    if method == "diff_of_means":
        return diff_of_means(lm, positive, negative, layers=layers)
    if method == "pca":
        if len(positive) != len(negative):
            raise InputError("pca pairs the sets one to one; give them the same number of prompts")
        return pca_of_differences(lm, list(zip(positive, negative, strict=True)), layers=layers)
    raise InputError(f"unknown method '{method}'; use diff_of_means or pca")


def weights(lm: LanguageModel, *, spectral: bool = True, progress: bool = False) -> list[ParamRow]:
    """The weight census of ``lm``'s checkpoint: one `ParamRow` (shape, rank, statistics) per tensor.

    ``spectral``: also the spectral measures (top singular value, stable and effective rank, ...), one SVD
    per matrix.

    Raises:
        WeightFileError: the model was not loaded from a checkpoint on disk (or it is unreadable).
    """
    from mechscope.progress import bar
    from mechscope.weights.analyze import analyze_checkpoint
    from mechscope.weights.reader import open_checkpoint
    from mechscope.weights.stats import StatsOptions

    with open_checkpoint(lm.source) as checkpoint, bar("weights", len(checkpoint), enabled=progress) as shown:
        told = [0]

        def advance(elements: int, tensors: int) -> None:
            if shown is not None:
                shown.advance(tensors - told[0])
            told[0] = tensors

        return analyze_checkpoint(checkpoint, StatsOptions(spectral=spectral), on_progress=advance)


def doctor(lm: LanguageModel) -> DoctorReport:
    """Check that every hook fires and captures match transformers exactly on ``lm``."""
    from mechscope.checks.doctor import run_doctor

    return run_doctor(lm)
