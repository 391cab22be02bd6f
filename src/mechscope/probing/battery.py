"""A probe battery: properties defined in YAML, probed at every layer in one collection pass, stratified.

A battery file lists probes; each names its prompts (a built-in ``generator`` of `mechscope.probing.
generators` with ``options``, or a prompt ``file``: JSON, JSONL or CSV), the ``label`` field to read
(``label``, ``sub_label`` or ``metadata.KEY``), an optional ``where`` filter, and a ``category`` for the
table. `run_battery` runs the union of every probe's prompts through the model once (`mechscope.probing.
collect`), probes each property at each layer with `mechscope.probing.probe` (held out by template, with
the majority baseline, the control task and a permutation p-value), and derives the stratigraphy
(`mechscope.probing.battery_results`) with a bootstrap interval over templates for each emergence layer.

`DEFAULT_BATTERY` (what ``mechscope circuit probes init`` writes, commented) runs on the organisms.

>>> spec = parse_battery(DEFAULT_BATTERY)
>>> [p.name for p in spec.probes]
['tool_mode', 'tool_type', 'style', 'fact_relation', 'subject_is_country', 'position_parity']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from mechscope.errors import InputError
from mechscope.probing.battery_results import BatteryResult, PropertyStrata
from mechscope.probing.dataset import LabelledPrompt, PromptDataset, load_prompts
from mechscope.probing.generators import generate
from mechscope.probing.probe import HeldOut, probe_predictions
from mechscope.probing.results import ProbeMethod, ProbeScore
from mechscope.progress import bar

if TYPE_CHECKING:
    from mechscope.core.lm import LanguageModel
    from mechscope.distributed.runner import Runner

DEFAULT_BATTERY = """\
# A mechscope probe battery. Each probe reads one property from the residual stream at every layer.
# Run it:   mechscope circuit probes run -m toy --battery battery.yaml --html strata.html
name: default
# The stratigraphy's rule: a property emerges at the first layer whose held-out accuracy is >= threshold
# and more than margin above the majority baseline, and is destroyed at the first later layer below
# destroyed_below.
threshold: 0.75
margin: 0.1
destroyed_below: 0.5
probes:
  # name: what the table calls it; category: the group it is listed in.
  # Prompts come from a built-in generator (tool_calls, styles, fact_relations, subject_country,
  # position_parity) with options, or from a file:  file: my_prompts.jsonl  (JSON, JSONL or CSV with
  # columns prompt,label[,sub_label,template]; a path relative to this file). The template column is the
  # group a probe is held out by: give each phrasing its own template id.
  # label: the field to read (label, sub_label, or metadata.KEY); where: keep only matching prompts.
  - name: tool_mode
    category: task
    generator: tool_calls
    options: {per_template: 6, seed: 0, tools: wide}
    label: label
  - name: tool_type
    category: task
    generator: tool_calls
    options: {per_template: 6, seed: 0, tools: wide}
    label: sub_label
    where: {label: 1}
  - name: style
    category: register
    generator: styles
    label: label
  - name: fact_relation
    category: knowledge
    generator: fact_relations
    label: label
  - name: subject_is_country
    category: knowledge
    generator: subject_country
    label: label
  # A control: the parity of the prompt's length in tokens should stay near chance at every layer.
  - name: position_parity
    category: control
    generator: position_parity
    label: label
"""


class ProbeSpec(BaseModel):
    """One property of a battery (see the module for the fields)."""

    name: str = Field(min_length=1)
    category: str = "other"
    generator: str | None = None
    file: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    label: str = "label"
    where: dict[str, Any] = Field(default_factory=dict)


class BatterySpec(BaseModel):
    """A battery: its name, the stratigraphy's rule and its probes."""

    name: str = "battery"
    threshold: float = Field(default=0.75, gt=0.0, le=1.0)
    margin: float = Field(default=0.1, ge=0.0, lt=1.0)
    destroyed_below: float = Field(default=0.5, gt=0.0, le=1.0)
    probes: list[ProbeSpec] = Field(min_length=1)
    folder: str = "."  # where relative prompt files are looked up (the battery file's folder)


def parse_battery(text: str, where: str = "battery", folder: str | os.PathLike[str] = ".") -> BatterySpec:
    """A battery from YAML text.

    Examples:
        >>> spec = parse_battery("{name: mine, threshold: 0.9, probes: [{name: style, generator: styles}]}")
        >>> spec.name, spec.threshold, spec.margin, [(p.name, p.category, p.generator, p.label) for p in spec.probes]
        ('mine', 0.9, 0.1, [('style', 'other', 'styles', 'label')])
        >>> parse_battery("probes: [{name: style}]", "mine.yaml")
        Traceback (most recent call last):
        ...
        mechscope.errors.InputError: mine.yaml: probe 'style' needs exactly one of 'generator' or 'file'

    Raises:
        InputError: not YAML, or a probe without prompts, with both a generator and a file, or a
            duplicate name; the message names the probe and the field.
    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{where}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: a battery is a mapping with a 'probes' list; see mechscope circuit probes init")
    try:
        spec = BatterySpec.model_validate({**data, "folder": str(folder)})
    except ValidationError as error:
        first = error.errors()[0]
        raise InputError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    names = [p.name for p in spec.probes]
    for p in spec.probes:
        if (p.generator is None) == (p.file is None):
            raise InputError(f"{where}: probe {p.name!r} needs exactly one of 'generator' or 'file'")
        if names.count(p.name) > 1:
            raise InputError(f"{where}: two probes are called {p.name!r}; give each its own name")
        if p.label not in ("label", "sub_label") and not p.label.startswith("metadata."):
            raise InputError(f"{where}: probe {p.name!r}: label must be label, sub_label or metadata.KEY")
    return spec


def load_battery(source: str | os.PathLike[str] = "default") -> BatterySpec:
    """``"default"`` (`DEFAULT_BATTERY`) or a YAML battery file.

    Examples:
        A file's relative prompt files are looked up next to it (its ``folder``):

        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "mine.yaml"
        >>> _ = path.write_text("{name: mine, probes: [{name: mood, file: mood.jsonl, label: metadata.mood}]}")
        >>> spec = load_battery(path)
        >>> spec.name, spec.probes[0].file, spec.folder == str(path.parent)
        ('mine', 'mood.jsonl', True)
        >>> load_battery("default").name, len(load_battery().probes)
        ('default', 6)

    Raises:
        InputError: the file is missing or invalid.
    """
    if str(source) == "default":
        return parse_battery(DEFAULT_BATTERY, "the default battery")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"no battery file at '{path}'; write a template with mechscope circuit probes init")
    return parse_battery(path.read_text(encoding="utf-8"), str(path), path.parent)


def _value(prompt: LabelledPrompt, field: str) -> Any:
    if field == "label":
        return prompt.label
    if field == "sub_label":
        return prompt.sub_label
    key = field.removeprefix("metadata.")
    if key not in prompt.metadata:
        raise InputError(f"a prompt has no metadata field {key!r} (prompt: {prompt.prompt[:40]!r})")
    return prompt.metadata[key]


def probe_dataset(spec: ProbeSpec, lm: LanguageModel, folder: str = ".") -> tuple[PromptDataset, list[Any]]:
    """A probe's prompts (after ``where``) and the label of each.

    Examples:
        The tool each tool-call prompt asks for (``where`` keeps the tool calls, ``label: 1``):

        >>> import mechscope as ms
        >>> spec = ProbeSpec(name="tool_type", generator="tool_calls", options={"per_template": 2},
        ...                  label="sub_label", where={"label": 1})
        >>> data, labels = probe_dataset(spec, ms.load("toy"))
        >>> data.prompts[0].prompt, labels[0], len(labels), len(set(labels))
        ("<user> What's the weather in Hanoi? <assistant>", 'weather', 64, 8)

    Raises:
        InputError: the prompts cannot be made, a field is missing, or fewer than two classes remain.
    """
    if spec.generator is not None:
        dataset = generate(spec.generator, lm, spec.options)
    else:
        path = Path(spec.file or "")
        dataset = load_prompts(path if path.is_absolute() else Path(folder) / path)
    keep = [i for i, p in enumerate(dataset.prompts) if all(_value(p, k) == v for k, v in spec.where.items())]
    dataset = dataset.subset(keep)
    labels = [_value(p, spec.label) for p in dataset.prompts]
    if len(set(map(str, labels))) < 2:
        raise InputError(f"probe {spec.name!r}: fewer than two classes of {spec.label} after 'where'")
    return dataset, labels


def readable_layers(
    accuracies: Sequence[float], majorities: Sequence[float], threshold: float, margin: float, below: float
) -> tuple[int | None, int | None]:
    """``(emergence, destruction)`` indices under the stratigraphy's rule (None: never).

    Examples:
        Readable from index 1 (at least 0.75 and more than 0.1 above the majority), lost at index 3 (below 0.5):

        >>> readable_layers([0.5, 0.8, 0.9, 0.4], [0.5] * 4, threshold=0.75, margin=0.1, below=0.5)
        (1, 3)
        >>> readable_layers([0.5, 0.8, 0.9], [0.75] * 3, threshold=0.75, margin=0.1, below=0.5)  # 0.8: too near
        (2, None)
    """
    emergence = next(
        (i for i, (a, m) in enumerate(zip(accuracies, majorities, strict=True)) if a >= threshold and a > m + margin),
        None,
    )
    if emergence is None:
        return None, None
    destruction = next((i for i in range(emergence + 1, len(accuracies)) if accuracies[i] < below), None)
    return emergence, destruction


def bootstrap_emergence(
    evidence: Sequence[HeldOut], spec: BatterySpec, samples: int, seed: int
) -> tuple[int | None, int | None, float]:
    """95% interval of the emergence index over ``samples`` resamples of groups, and the share 'never'.

    Each resample draws the held-out groups with replacement and rescores every layer's held-out predictions
    and the majority baseline on the drawn examples (the probes are not refitted).

    Examples:
        Three "layers" of features where a binary label is absent, faint and strong; the faint one is just
        readable, so the interval of the emergence layer spans it and the next. Without the strong layer, over a
        third of the resamples never see the label emerge, and the interval is open above (None):

        >>> import numpy as np
        >>> from mechscope.probing.probe import probe_predictions
        >>> rng = np.random.default_rng(0)
        >>> y, groups, noise = np.repeat([0, 1], 40), np.arange(80) // 5, rng.normal(size=(80, 4))
        >>> evidence = [probe_predictions(noise + shift * y[:, None], y, groups, permutations=0,
        ...                               method="diff_means")[1] for shift in (0.0, 1.0, 4.0)]
        >>> [round(float((e.predictions == e.y).mean()), 3) for e in evidence]
        [0.5, 0.775, 1.0]
        >>> bootstrap_emergence(evidence, parse_battery(DEFAULT_BATTERY), samples=200, seed=0)
        (1, 2, 0.0)
        >>> bootstrap_emergence(evidence[:2], parse_battery(DEFAULT_BATTERY), samples=200, seed=0)
        (1, None, 0.365)
    """
    if samples < 1:
        return None, None, 0.0
    first = evidence[0]
    tested = np.concatenate([test for _, test in first.splits])
    groups = first.groups[tested]
    names, inverse = np.unique(groups, return_inverse=True)
    members = [tested[inverse == g] for g in range(len(names))]
    hits = [(e.predictions == e.y).astype(np.float64) for e in evidence]
    rng = np.random.default_rng(seed)
    never = len(evidence)
    found = []
    for _ in range(samples):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        acc = [float(h[rows].mean()) for h in hits]
        maj = [first.majority_on(rows)] * len(evidence)  # the labels, hence the baseline, are the same at every layer
        layer, _ = readable_layers(acc, maj, spec.threshold, spec.margin, spec.destroyed_below)
        found.append(never if layer is None else layer)
    low, high = np.percentile(found, [2.5, 97.5], method="nearest")
    share = float(np.mean([f == never for f in found]))
    return (None if low == never else int(low)), (None if high == never else int(high)), share


def _strata(
    spec: ProbeSpec,
    battery: BatterySpec,
    layers: list[int],
    scored: list[tuple[ProbeScore, HeldOut]],
    bootstrap: int,
    seed: int,
) -> PropertyStrata:
    scores = [s for s, _ in scored]
    accuracies, majorities = [s.accuracy for s in scores], [s.majority for s in scores]
    emergence, destruction = readable_layers(
        accuracies, majorities, battery.threshold, battery.margin, battery.destroyed_below
    )
    low, high, never = bootstrap_emergence([e for _, e in scored], battery, bootstrap, seed)
    peak = int(np.argmax(accuracies))
    return PropertyStrata(
        name=spec.name,
        category=spec.category,
        label=spec.label,
        source=spec.generator or spec.file or "",
        n=scores[0].n,
        n_groups=scores[0].n_groups,
        n_classes=scores[0].n_classes,
        layers=layers,
        scores=scores,
        emergence=None if emergence is None else layers[emergence],
        emergence_low=None if low is None else layers[low],
        emergence_high=None if high is None else layers[high],
        emergence_never_share=never,
        peak=layers[peak],
        peak_accuracy=accuracies[peak],
        destruction=None if destruction is None else layers[destruction],
    )


def model_layers(lm: LanguageModel, text: str) -> list[int]:
    """The layers a ``--layers`` value names in ``lm`` (`mechscope.core.layers.parse_layers` on its depth).

    Examples:
        >>> import mechscope as ms
        >>> lm = ms.load("toy")  # 4 layers
        >>> model_layers(lm, "1-2"), model_layers(lm, "-1"), model_layers(lm, "all")
        ([1, 2], [3], [0, 1, 2, 3])
    """
    from mechscope.core.layers import parse_layers

    return parse_layers(text, lm.arch.n_layers)


def plan_battery(
    lm: LanguageModel, spec: BatterySpec, layers: Sequence[int] | None
) -> tuple[str, list[int], list[tuple[ProbeSpec, PromptDataset, list[Any]]]]:
    """What a battery needs from the model before it collects: ``(model source, layers, probes' prompts)``.

    Examples:
        >>> import mechscope as ms
        >>> spec = parse_battery("probes: [{name: style, generator: styles}, {name: odd, generator: position_parity}]")
        >>> source, layers, probes = plan_battery(ms.load("toy"), spec, [1, -1])
        >>> source.endswith("toy"), layers, [(p.name, len(data.prompts), len(labels)) for p, data, labels in probes]
        (True, [1, 3], [('style', 168, 168), ('odd', 240, 240)])

    Raises:
        InputError: a probe whose prompts cannot be made; SiteError: a layer the model lacks.
    """
    from mechscope.core.layers import resolve_layers

    chosen = resolve_layers(layers, lm.arch.n_layers) if layers is not None else list(range(lm.arch.n_layers))
    return lm.source, chosen, [(p, *probe_dataset(p, lm, spec.folder)) for p in spec.probes]


def run_battery(
    lm: LanguageModel | None,
    battery: BatterySpec | str | os.PathLike[str] = "default",
    *,
    layers: Sequence[int] | None = None,
    positions: str = "last",
    method: ProbeMethod = "logistic",
    folds: int = 5,
    permutations: int = 20,
    bootstrap: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    activations: str | os.PathLike[str] | None = None,
    progress: bool = True,
    runner: Runner | None = None,
) -> BatteryResult:
    """Run a probe battery on ``lm`` (see the module).

    Args:
        battery: a `BatterySpec`, ``"default"`` or a YAML file.
        layers: the layers to probe (default every layer; ``resid_post`` of each).
        positions: ``"last"`` or ``"mean"``.
        method, folds, permutations: how each probe is scored (`mechscope.probing.probe.probe`).
        bootstrap: resamples of templates for each emergence interval (0: none).
        activations: a folder to keep the collected activations in (resumable); default a temporary one
            (on a Ray cluster of several machines, give a folder every worker sees).
        runner: where the model runs (the prompts' planning and the collection; default: here, on ``lm``;
            ``lm`` may be None then). The probes are fitted here, on the collected features.

    Examples:
        One property, two layers, few shuffles and resamples (the defaults are 20 and 200):

        >>> import mechscope as ms
        >>> spec = parse_battery("{name: mine, probes: [{name: style, category: register, generator: styles}]}")
        >>> result = run_battery(ms.load("toy"), spec, layers=[0, 2], permutations=2, bootstrap=20, progress=False)
        >>> style = result.property("style")
        >>> result.prompts, [round(a, 3) for a in style.accuracies()], style.emergence, style.peak
        (168, [0.917, 0.994], 0, 2)
        >>> result.stratigraphy()  # doctest: +ELLIPSIS
        [{'category': 'register', 'property': 'style', 'emergence': 0, 'emergence_ci': [0, 0], 'peak': 2, ...}]

    Raises:
        InputError: a bad battery, a probe whose prompts cannot be made, or a layer the model lacks.
    """
    from mechscope.distributed.runner import LocalRunner
    from mechscope.probing.collect import collect

    spec = battery if isinstance(battery, BatterySpec) else load_battery(battery)
    if runner is None:
        if lm is None:
            raise InputError("a battery needs a model or a runner that holds one")
        runner = LocalRunner(lm)
    source, chosen, probes = runner.call(plan_battery, spec, list(layers) if layers is not None else None)
    texts = list(dict.fromkeys(t for _, data, _ in probes for t in data.texts()))
    union = PromptDataset(
        name=f"battery-{spec.name}", prompts=[LabelledPrompt(prompt=t, label=0, template=t) for t in texts]
    )
    row = {t: i for i, t in enumerate(texts)}
    with tempfile.TemporaryDirectory(prefix="mechscope-battery-") as scratch:
        acts = collect(
            None,
            union,
            activations if activations is not None else scratch,
            sites=[f"resid_post.{layer}" for layer in chosen],
            positions=positions,
            batch_size=batch_size,
            progress=progress,
            runner=runner,
        )
        features = {layer: acts.features(f"resid_post.{layer}") for layer in chosen}
    properties = []
    with bar("probes", len(probes) * len(chosen), enabled=progress) as shown:
        for p, data, labels in probes:
            index = np.array([row[t] for t in data.texts()])
            scored = []
            for layer in chosen:
                scored.append(
                    probe_predictions(
                        features[layer][index],
                        [str(v) for v in labels],
                        data.templates(),
                        folds=folds,
                        seed=seed,
                        permutations=permutations,
                        method=method,
                    )
                )
                if shown is not None:
                    shown.advance(1)
            properties.append(_strata(p, spec, chosen, scored, bootstrap, seed))
    return BatteryResult(
        model=source,
        battery=spec.name,
        positions=positions,
        layers=chosen,
        threshold=spec.threshold,
        margin=spec.margin,
        destroyed_below=spec.destroyed_below,
        method=method,
        folds=folds,
        permutations=permutations,
        bootstrap=bootstrap,
        seed=seed,
        prompts=len(texts),
        properties=properties,
    )


class ProbeBattery:
    """The seed's name: a battery bound to its spec; `run` probes a model.

    Examples:
        >>> battery = ProbeBattery("default")
        >>> battery.spec.name, len(battery.spec.probes)
        ('default', 6)
    """

    def __init__(self, battery: BatterySpec | str | os.PathLike[str] = "default") -> None:
        self.spec = battery if isinstance(battery, BatterySpec) else load_battery(battery)

    def run(self, lm: LanguageModel, **options: Any) -> BatteryResult:
        """`run_battery` with this battery."""
        return run_battery(lm, self.spec, **options)
