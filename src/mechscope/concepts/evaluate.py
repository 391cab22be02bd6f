"""Train readers on an encyclopedia and evaluate them where they cannot flatter themselves.

Two held-out settings:

* ``templates`` — the readers train on the training split (bare terms, training templates, generated and
  adversarial contexts) and are scored on contexts built from held-out templates, which no mean and no
  reader ever saw. Top-1/top-5 against chance, a nearest-centroid reader and a linear probe fitted on the
  same rows; calibration of the interpreter's confidence; accuracy per category.
* ``concepts`` — a fixed tenth of the concepts (chosen by a hash of the id, so every run agrees) is left
  out of training entirely; the readers predict the *category* of those concepts' samples, against the
  majority category and a category-centroid reader.

`training_rows` decides which rows train a reader, for the interpreter and every baseline alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechscope.concepts.calibration import (
    confidence,
    expected_calibration_error,
    reliability,
    score_categories,
    score_reader,
)
from mechscope.concepts.encyclopedia import Encyclopedia, Samples
from mechscope.concepts.evaluation_results import CategoryAccuracy, ConceptEvaluation
from mechscope.concepts.readers import LinearProbe, NearestCentroid
from mechscope.errors import InputError
from mechscope.storage.atomic import atomic_write_text

if TYPE_CHECKING:
    from mechscope.concepts.interpreter import Interpreter, InterpreterConfig
    from mechscope.concepts.interpreter_results import TrainingLog

HELD_OUT = ("templates", "concepts")
PROVENANCE = "training.json"


def held_out_concepts(encyclopedia: Encyclopedia, every: int = 10) -> np.ndarray:
    """``[K]`` bool: the concepts left out under ``held_out="concepts"`` (one in ``every``, by id hash).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, progress=False)
        >>> left_out = held_out_concepts(enc)  # the same concepts on every run, of every file of this list
        >>> left_out.shape, int(left_out.sum()), enc.concepts[int(left_out.argmax())].id
        ((161,), 23, 'toy:country:Hungary')
    """
    digests = [hashlib.sha256(c.id.encode("utf-8")).digest() for c in encyclopedia.concepts]
    return np.array([int.from_bytes(d[:4], "little") % every == 0 for d in digests])


def _check(held_out: str) -> None:
    if held_out not in HELD_OUT:
        raise InputError(f"unknown held-out setting '{held_out}'; use templates or concepts")


def training_rows(encyclopedia: Encyclopedia, layers: Sequence[int] | None, held_out: str) -> Samples:
    """The samples readers train on: the training split, minus held-out concepts' under ``concepts``.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, progress=False)
        >>> rows = training_rows(enc, None, "templates")  # stage 0: one bare-term sample per concept
        >>> len(rows), rows.x.shape, len(training_rows(enc, [-1], "concepts"))  # 23 of the 161 held out
        (161, (161, 1, 128), 138)
    """
    _check(held_out)
    train = encyclopedia.samples(layers, split="train")
    if held_out == "concepts":
        train = train.where(~held_out_concepts(encyclopedia)[train.concept])
    if not len(train):
        raise InputError(f"'{encyclopedia.path}' has no training samples; bootstrap it first")
    return train


def evaluation_rows(encyclopedia: Encyclopedia, layers: Sequence[int] | None, held_out: str) -> Samples:
    """The samples readers are scored on (see the module docstring).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, progress=False)
        >>> rows = evaluation_rows(enc, None, "concepts")  # every sample of the held-out concepts
        >>> len(rows), bool(held_out_concepts(enc)[rows.concept].all())
        (23, True)
        >>> evaluation_rows(enc, None, "templates")
        Traceback (most recent call last):
        mechscope.errors.InputError: '.../enc.h5' has no held-out-template samples; run `concepts refine --stage 1` ...

    Raises:
        InputError: there are none (held-out templates come from ``concepts refine --stage 1``).
    """
    _check(held_out)
    if held_out == "templates":
        rows = encyclopedia.samples(layers, split="held-out")
        if not len(rows):
            raise InputError(
                f"'{encyclopedia.path}' has no held-out-template samples; run `concepts refine --stage 1` first"
            )
        return rows
    every = encyclopedia.samples(layers)
    return every.where(held_out_concepts(encyclopedia)[every.concept])


def train(
    encyclopedia: Encyclopedia,
    *,
    layers: Sequence[int] | None = None,
    held_out: str = "templates",
    config: InterpreterConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[Interpreter, TrainingLog]:
    """Train an interpreter on ``encyclopedia``'s training rows (augmented from its stored variance).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.interpreter import InterpreterConfig
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, layers=[-2, -1], progress=False)
        >>> config = InterpreterConfig(d_model=32, heads=2, n_layers_encoder=1, epochs=2, augment=0)
        >>> interpreter, log = train(enc, layers=[-1], config=config)
        >>> interpreter.layers, len(interpreter.concept_ids), interpreter.categories
        ([3], 161, ['toy:animal', 'toy:colour', 'toy:country', 'toy:element'])
        >>> len(log.loss), log.n_train, log.device
        (2, 161, 'cpu')
    """
    from mechscope.concepts.interpreter_train import train_interpreter

    rows = training_rows(encyclopedia, layers, held_out)
    chosen = list(rows.layers)
    count = torch.tensor(encyclopedia.count())
    mean = torch.tensor(np.stack([encyclopedia.mean(layer) for layer in chosen], axis=1))
    variance = torch.tensor(np.stack([encyclopedia.variance(layer) for layer in chosen], axis=1))
    if held_out == "concepts":
        count[torch.tensor(held_out_concepts(encyclopedia))] = 0  # nothing of a held-out concept is synthesised
    return train_interpreter(
        torch.tensor(rows.x),
        torch.tensor(rows.concept, dtype=torch.long),
        concept_ids=encyclopedia.concepts.ids(),
        category=[c.category or "-" for c in encyclopedia.concepts],
        layers=chosen,
        config=config,
        mean=mean,
        variance=variance,
        count=count,
        device=device,
        progress=progress,
    )


def save_provenance(folder: str | os.PathLike[str], encyclopedia: Encyclopedia, held_out: str) -> Path:
    """Record which encyclopedia and held-out setting an interpreter was trained on (``training.json``).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, progress=False)
        >>> folder = tempfile.mkdtemp()  # the interpreter's checkpoint folder
        >>> save_provenance(folder, enc, "concepts").name
        'training.json'
        >>> record = read_provenance(folder)
        >>> pathlib.Path(record["model"]).name, record["held_out"], len(record["held_out_concepts"])
        ('toy', 'concepts', 23)
        >>> record["held_out_concepts"][0], record["concepts_sha256"] == enc.info.concepts_sha256
        ('toy:country:Hungary', True)
    """
    left_out = held_out_concepts(encyclopedia) if held_out == "concepts" else np.zeros(len(encyclopedia), bool)
    record = {
        "encyclopedia": str(encyclopedia.path),
        "concepts_sha256": encyclopedia.info.concepts_sha256,
        "model": encyclopedia.info.model,
        "held_out": held_out,
        "held_out_concepts": [encyclopedia.concepts[int(i)].id for i in np.flatnonzero(left_out)],
    }
    return atomic_write_text(Path(folder) / PROVENANCE, json.dumps(record, indent=1) + "\n")


def read_provenance(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What `save_provenance` wrote (an empty record for an interpreter trained outside the CLI).

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(ms.load("toy"), toyworld_concepts(), out, progress=False)
        >>> folder = tempfile.mkdtemp()
        >>> read_provenance(folder)  # nothing recorded yet
        {}
        >>> _ = save_provenance(folder, enc, "templates")
        >>> record = read_provenance(folder)
        >>> record["encyclopedia"] == str(out), record["held_out"], record["held_out_concepts"]
        (True, 'templates', [])
    """
    path = Path(folder) / PROVENANCE
    if not path.is_file():
        return {}
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise InputError(f"'{path}' is corrupt; retrain the interpreter") from None
    return data


def check_match(interpreter: Interpreter, encyclopedia: Encyclopedia) -> None:
    """Refuse an interpreter of another concept list or layer set.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.interpreter import Interpreter, InterpreterConfig
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> concepts = ConceptList(toyworld_concepts().concepts[:3])
        >>> enc = bootstrap(ms.load("toy"), concepts, out, layers=[-1], progress=False)
        >>> def reader(ids, layers):
        ...     return Interpreter(128, len(layers), ids, ["-"] * len(ids), InterpreterConfig(16, heads=2), layers)
        >>> check_match(reader(concepts.ids(), [3]), enc)  # the same concepts and layers: nothing to say
        >>> check_match(reader(concepts.ids()[:2], [3]), enc)
        Traceback (most recent call last):
        mechscope.errors.InputError: the interpreter reads other concepts than '.../enc.h5'; train it on this file
        >>> check_match(reader(concepts.ids(), [2]), enc)
        Traceback (most recent call last):
        mechscope.errors.InputError: the interpreter reads layers [2], which '.../enc.h5' does not have

    Raises:
        InputError: the concepts or layers differ.
    """
    if interpreter.concept_ids != encyclopedia.concepts.ids():
        raise InputError(f"the interpreter reads other concepts than '{encyclopedia.path}'; train it on this file")
    missing = [layer for layer in interpreter.layers if layer not in encyclopedia.info.layers]
    if missing:
        raise InputError(f"the interpreter reads layers {missing}, which '{encyclopedia.path}' does not have")


def evaluate(
    encyclopedia: Encyclopedia,
    interpreter: Interpreter,
    *,
    held_out: str = "templates",
    linear: bool = True,
    linear_epochs: int = 30,
    n_bins: int = 15,
) -> ConceptEvaluation:
    """Score ``interpreter`` and baselines fitted on the same training rows, on held-out samples.

    Args:
        linear: also fit the linear probe (softmax regression, AdamW for ``linear_epochs`` epochs).
        n_bins: equal-width confidence bins of the calibration error.

    Examples:
        Held-out templates (stage 1) give the samples to score on; the readers train on the bare terms:

        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.interpreter import InterpreterConfig
        >>> from mechscope.concepts.refine import refine, template_contexts
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> lm, out = ms.load("toy"), pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> enc = bootstrap(lm, toyworld_concepts(), out, progress=False)
        >>> enc = refine(lm, out, template_contexts(enc, range(len(enc)), 0, held_out=1), 1)
        >>> interpreter, _ = train(enc, config=InterpreterConfig(d_model=32, heads=2, n_layers_encoder=1, epochs=2))
        >>> result = evaluate(enc, interpreter, linear_epochs=5)
        >>> result.n_train, result.n_eval, result.n_concepts, [score.name for score in result.readers]
        (161, 161, 161, ['interpreter', 'centroid', 'linear'])
        >>> result.reader("centroid").chance_top1 == 1 / 161, 0 <= result.ece <= 1, len(result.per_category)
        (True, True, 4)
    """
    check_match(interpreter, encyclopedia)
    layers = interpreter.layers
    train_rows = training_rows(encyclopedia, layers, held_out)
    test = evaluation_rows(encyclopedia, layers, held_out)
    x_train, y_train = torch.tensor(train_rows.x), torch.tensor(train_rows.concept, dtype=torch.long)
    x_test = torch.tensor(test.x)
    k = len(encyclopedia)
    result = ConceptEvaluation(
        model=encyclopedia.info.model,
        layers=list(layers),
        held_out=held_out,
        n_train=len(train_rows),
        n_eval=len(test),
        n_concepts=k,
    )
    if held_out == "concepts":
        result.categories = _category_scores(interpreter, x_train, train_rows, x_test, test)
        return result
    probs = interpreter.probabilities(x_test).numpy()
    result.readers.append(score_reader("interpreter", probs, test.concept))
    centroid = NearestCentroid().fit(x_train, y_train, n_classes=k)
    centroid_scores = centroid.scores(x_test).numpy()
    result.readers.append(score_reader("centroid", centroid_scores, test.concept))
    if linear:
        probe = LinearProbe(optimizer="adamw", epochs=linear_epochs, lr=3e-3, l2=1e-5).fit(
            x_train, y_train, n_classes=k
        )
        result.readers.append(score_reader("linear", probe.logits(x_test).numpy(), test.concept))
    correct = probs.argmax(1) == test.concept
    sure = confidence(probs)
    result.ece = expected_calibration_error(sure, correct, n_bins)
    result.ece_top_probability = expected_calibration_error(probs.max(1), correct, n_bins)
    result.reliability = reliability(sure, correct, n_bins)
    centroid_correct = centroid_scores.argmax(1) == test.concept
    category = np.array([encyclopedia.concepts[int(i)].category or "-" for i in test.concept])
    for name in sorted(set(category)):
        mask = category == name
        result.per_category.append(
            CategoryAccuracy(
                category=name,
                n=int(mask.sum()),
                top1=float(correct[mask].mean()),
                centroid_top1=float(centroid_correct[mask].mean()),
            )
        )
    return result


def _category_scores(
    interpreter: Interpreter, x_train: torch.Tensor, train_rows: Samples, x_test: torch.Tensor, test: Samples
) -> list[Any]:
    if not len(test):
        raise InputError("no held-out concepts have samples; the encyclopedia is too small to hold a tenth out")
    of_concept = np.array(interpreter.concept_category)
    y_cat = of_concept[test.concept]
    n_categories = len(interpreter.categories)
    scores = [score_categories("interpreter", interpreter.category_probabilities(x_test).numpy(), y_cat)]
    reader = NearestCentroid().fit(x_train, torch.tensor(of_concept[train_rows.concept]), n_classes=n_categories)
    scores.append(score_categories("category centroid", reader.scores(x_test).numpy(), y_cat))
    return scores


def uncertain(
    encyclopedia: Encyclopedia, interpreter: Interpreter, below: float = 0.5
) -> list[tuple[int, float, bool]]:
    """Concepts the interpreter is unsure of on their own mean: ``(index, confidence, read right)``.

    A concept is listed when the confidence ``1 − H/H_max`` of the interpreter on the concept's stored mean
    is below ``below``, or when the interpreter reads that mean as another concept.

    Examples:
        >>> import tempfile, pathlib
        >>> import mechscope as ms
        >>> from mechscope.concepts.bootstrap import bootstrap
        >>> from mechscope.concepts.concept import ConceptList
        >>> from mechscope.concepts.interpreter import InterpreterConfig
        >>> from mechscope.concepts.sources import toyworld_concepts
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "enc.h5"
        >>> concepts = ConceptList(toyworld_concepts().concepts[::20])  # nine, of every kind
        >>> enc = bootstrap(ms.load("toy"), concepts, out, progress=False)
        >>> config = InterpreterConfig(d_model=32, heads=2, n_layers_encoder=1, epochs=20, lr=3e-3, augment=0)
        >>> interpreter, _ = train(enc, config=config)
        >>> unsure = uncertain(enc, interpreter, below=0.5)  # the concepts to refine next
        >>> [(enc.concepts[i].term, right) for i, _, right in unsure], all(sure < 0.5 for _, sure, _ in unsure)
        ([('France', True), ('Finland', True), ('Philippines', True), ('copper', True), ('strontium', True)], True)
    """
    check_match(interpreter, encyclopedia)
    x = torch.tensor(np.stack([encyclopedia.mean(layer) for layer in interpreter.layers], axis=1))
    probs = interpreter.probabilities(x).numpy()
    sure = confidence(probs)
    right = probs.argmax(1) == np.arange(len(encyclopedia))
    return [(i, float(sure[i]), bool(right[i])) for i in range(len(encyclopedia)) if sure[i] < below or not right[i]]


def true_concept_probability(interpreter: Interpreter, layers: Sequence[int]) -> Any:
    """``score(x, concept)``: the interpreter's probability of each sample's true concept (for stage 3).

    ``x`` holds ``layers`` (an encyclopedia's), of which the interpreter reads its own.

    Examples:
        The interpreter reads layer 3 of samples that hold layers 2 and 3:

        >>> import torch
        >>> import numpy as np
        >>> from mechscope.concepts.interpreter import Interpreter, InterpreterConfig
        >>> _ = torch.manual_seed(0)
        >>> reader = Interpreter(8, 1, ["a", "b", "c"], ["-"] * 3, InterpreterConfig(16, heads=2), layers=[3])
        >>> score = true_concept_probability(reader, layers=[2, 3])
        >>> x = np.random.default_rng(0).standard_normal((4, 2, 8)).astype(np.float32)
        >>> p = score(x, np.array([0, 1, 2, 0]))
        >>> p.shape, bool(((p > 0) & (p < 1)).all())
        ((4,), True)
        >>> bool(np.allclose(p, reader.probabilities(torch.tensor(x[:, 1:])).numpy()[np.arange(4), [0, 1, 2, 0]]))
        True
    """
    columns = [list(layers).index(layer) for layer in interpreter.layers]

    def score(x: np.ndarray, concept: np.ndarray) -> np.ndarray:
        probs = interpreter.probabilities(torch.tensor(x[:, columns])).numpy()
        return np.asarray(probs[np.arange(len(concept)), concept])

    return score
