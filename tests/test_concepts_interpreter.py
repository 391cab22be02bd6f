"""The concept interpreter, its baseline readers and the calibration measures, checked against independent code.

Calibration is compared with hand-written loops and `scipy.stats.entropy`; the nearest-centroid reader with
scikit-learn's `NearestCentroid`; the linear probe with scikit-learn's `LogisticRegression` on the same
objective. The interpreter is trained on small synthetic problems built so that a centroid reader must fail
(each class is two antipodal blobs, so every centroid sits near the origin), on an easy linear problem, on
held-out classes whose categories are shared (hierarchical variant) and on a few-sample problem
(augmentation). Everything is seeded; training runs on the CPU in float32.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from torch import Tensor

from mechscope.concepts.calibration import (
    confidence,
    expected_calibration_error,
    reliability,
    score_categories,
    score_reader,
    top_k_accuracy,
)
from mechscope.concepts.interpreter import META_FILE, TENSORS_FILE, Interpreter, InterpreterConfig
from mechscope.concepts.interpreter_results import TrainingLog
from mechscope.concepts.interpreter_train import synthesize, train_interpreter
from mechscope.concepts.readers import LinearProbe, NearestCentroid
from mechscope.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def small(epochs: int, batch_size: int, hierarchical: bool = False) -> InterpreterConfig:
    """A small interpreter (width 64, one encoder layer) for the tests."""
    return InterpreterConfig(
        d_model=64, heads=4, n_layers_encoder=1, epochs=epochs, batch_size=batch_size, hierarchical=hierarchical
    )


def _ids(k: int) -> list[str]:
    return [f"toy:concept:{i}" for i in range(k)]


def _one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------------------------- data


def antipodal(seed: int = 0, k: int = 10, d: int = 16, n_layers: int = 2) -> tuple[Tensor, ...]:
    """Each class is two blobs at ``+mu_k`` and ``-mu_k``: its centroid sits near the origin."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, n_layers, d, generator=g) * 6.0 / math.sqrt(d)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(k).repeat_interleave(n)
        sign = torch.where(torch.rand(len(y), generator=g) < 0.5, -1.0, 1.0)
        return sign.view(-1, 1, 1) * mu[y] + 0.6 * torch.randn(len(y), n_layers, d, generator=g), y

    return (*draw(40), *draw(20))


def gaussian_clusters(
    seed: int, k: int, d: int, n_layers: int, n_train: int, n_test: int, spread: float, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    """One isotropic unit-variance Gaussian per class around a random centre of scale ``spread``."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, n_layers, d, generator=g, dtype=torch.float64) * spread

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(k).repeat_interleave(n)
        return (centers[y] + torch.randn(len(y), n_layers, d, generator=g, dtype=torch.float64)).to(dtype), y

    return (*draw(n_train), *draw(n_test))


@pytest.fixture(scope="module")
def linear_data() -> tuple[Tensor, ...]:
    return gaussian_clusters(3, k=8, d=12, n_layers=2, n_train=30, n_test=30, spread=1.0, dtype=torch.float32)


@pytest.fixture(scope="module")
def flat_model(linear_data: tuple[Tensor, ...]) -> Interpreter:
    xtr, ytr, _xte, _yte = linear_data
    config = small(20, 32)
    category = ["noun.animal"] * 3 + ["noun.artifact"] * 3 + ["noun.food"] * 2
    model, _log = train_interpreter(
        xtr, ytr, concept_ids=_ids(8), category=category, layers=[2, 5], config=config, progress=False
    )
    return model


@pytest.fixture(scope="module")
def hierarchy() -> dict[str, Tensor | list[str]]:
    """4 categories of 6 concepts; the last concept of each category is never seen in training."""
    g = torch.Generator().manual_seed(2)
    n_cat, per, d, n_layers = 4, 6, 16, 2
    centers = torch.randn(n_cat, n_layers, d, generator=g) * 2.0
    concepts = centers.repeat_interleave(per, 0) + torch.randn(n_cat * per, n_layers, d, generator=g) * 0.7
    held = torch.tensor([j * per + per - 1 for j in range(n_cat)])
    seen = torch.tensor([c for c in range(n_cat * per) if c not in set(held.tolist())])

    def draw(classes: Tensor, n: int) -> tuple[Tensor, Tensor]:
        y = classes.repeat_interleave(n)
        return concepts[y] + 0.5 * torch.randn(len(y), n_layers, d, generator=g), y

    xtr, ytr = draw(seen, 20)
    x_held, y_held = draw(held, 30)
    category = [f"noun.group{j}" for j in range(n_cat) for _ in range(per)]
    return {"xtr": xtr, "ytr": ytr, "x_held": x_held, "y_held": y_held, "category": category}


@pytest.fixture(scope="module")
def hierarchical_model(hierarchy: dict[str, Tensor | list[str]]) -> Interpreter:
    config = small(20, 64, hierarchical=True)
    xtr, ytr, category = hierarchy["xtr"], hierarchy["ytr"], hierarchy["category"]
    assert isinstance(xtr, Tensor) and isinstance(ytr, Tensor) and isinstance(category, list)
    model, _log = train_interpreter(
        xtr, ytr, concept_ids=_ids(len(category)), category=category, config=config, progress=False
    )
    return model


# -------------------------------------------------------------------------------------- calibration


def _ece_loop(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[float, list[tuple[int, float, float]]]:
    """Guo et al.'s ECE, element by element: bins (lo, hi], the first one closed at 0."""
    n, total, bins = len(conf), 0.0, []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(n) if lo < conf[i] <= hi or (b == 0 and conf[i] == 0.0)]
        if members:
            accuracy = sum(float(correct[i]) for i in members) / len(members)
            mean_conf = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / n * abs(accuracy - mean_conf)
            bins.append((len(members), mean_conf, accuracy))
        else:
            bins.append((0, math.nan, math.nan))
    return total, bins


def test_confidence_is_one_minus_normalised_scipy_entropy() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(7, 0.3), size=200)
    probs[:20, :3] = 0.0  # exact zeros: 0·log 0 = 0
    probs /= probs.sum(axis=1, keepdims=True)
    expected = 1.0 - scipy_entropy(probs, axis=1) / math.log(7)
    np.testing.assert_allclose(confidence(probs), expected, atol=1e-12)
    assert confidence(np.eye(5)).tolist() == [1.0] * 5
    np.testing.assert_allclose(confidence(np.full((3, 9), 1 / 9)), 0.0, atol=1e-12)
    assert ((confidence(probs) >= 0) & (confidence(probs) <= 1)).all()


def test_ece_and_reliability_match_a_hand_written_loop() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0, 1, 500)
    correct = rng.uniform(0, 1, 500) < conf**2
    for n_bins in (1, 7, 15):
        expected, bins = _ece_loop(conf, correct, n_bins)
        assert expected_calibration_error(conf, correct, n_bins) == pytest.approx(expected, abs=1e-12)
        found = reliability(conf, correct, n_bins)
        assert [b.count for b in found] == [count for count, _, _ in bins]
        for b, (count, mean_conf, accuracy) in zip(found, bins, strict=True):
            if count:
                assert b.mean_confidence == pytest.approx(mean_conf) and b.accuracy == pytest.approx(accuracy)
            else:
                assert b.mean_confidence is None and b.accuracy is None
    # edges: 0 joins the first bin, every other edge value the bin below it
    edges = reliability(np.array([0.0, 0.25, 0.5, 0.75, 1.0]), np.ones(5), n_bins=4)
    assert [b.count for b in edges] == [2, 1, 1, 1]
    assert (edges[0].lower, edges[-1].upper) == (0.0, 1.0)


def test_ece_is_near_zero_when_calibrated_and_large_when_over_confident() -> None:
    rng = np.random.default_rng(2)
    conf = rng.uniform(0, 1, 100_000)
    calibrated = rng.uniform(0, 1, conf.size) < conf
    assert expected_calibration_error(conf, calibrated) < 0.015
    sure = rng.uniform(0.8, 1.0, 100_000)
    over = rng.uniform(0, 1, sure.size) < sure - 0.3  # 30 points less accurate than it claims
    assert expected_calibration_error(sure, over) == pytest.approx(0.3, abs=0.01)


def test_top_k_accuracy_matches_argsort_and_counts_ties_against() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(300, 12))
    y = rng.integers(0, 12, 300)
    ranking = np.argsort(-scores, axis=1)
    for k in (1, 3, 5, 12):
        expected = np.mean([y[i] in ranking[i, :k] for i in range(300)])
        assert top_k_accuracy(scores, y, k) == pytest.approx(expected)
    assert top_k_accuracy(np.zeros((4, 3)), np.array([0, 1, 2, 0]), 1) == 0.0  # a constant reader reads nothing
    score = score_reader("r", scores, y)
    assert (score.top1, score.chance_top1, score.chance_top5) == (top_k_accuracy(scores, y, 1), 1 / 12, 5 / 12)
    cats = score_categories("r", np.eye(3)[[0, 0, 1, 2]], np.array([0, 0, 1, 1]))
    assert (cats.accuracy, cats.majority, cats.n_categories) == (0.75, 0.5, 3)


def test_calibration_refuses_bad_input_in_one_line() -> None:
    cases: list[Callable[[], object]] = [
        lambda: confidence(np.ones((3, 1))),  # K < 2
        lambda: confidence(np.zeros((0, 4))),  # empty
        lambda: confidence(np.full((2, 3), 0.5)),  # rows do not sum to 1
        lambda: expected_calibration_error(np.array([0.5, 0.5]), np.array([1])),  # lengths differ
        lambda: expected_calibration_error(np.array([1.5]), np.array([1])),  # outside [0, 1]
        lambda: top_k_accuracy(np.zeros((2, 3)), np.array([0, 3]), 1),  # label out of range
    ]
    for case in cases:
        with pytest.raises(InputError) as error:
            case()
        _one_line(error)


# ------------------------------------------------------------------------------------------ readers


@pytest.mark.parametrize("standardize", [False, True])
def test_nearest_centroid_predicts_like_sklearn(standardize: bool) -> None:
    from sklearn.neighbors import NearestCentroid as SkNearestCentroid
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, _yte = gaussian_clusters(4, 8, 12, 2, 40, 60, spread=0.6, dtype=torch.float64)
    ours = NearestCentroid(metric="euclidean", standardize=standardize).fit(xtr, ytr).predict(xte).numpy()
    train, test = xtr.reshape(len(xtr), -1).numpy(), xte.reshape(len(xte), -1).numpy()
    if standardize:
        scaler = StandardScaler().fit(train)
        train, test = scaler.transform(train), scaler.transform(test)
    theirs = SkNearestCentroid().fit(train, ytr.numpy()).predict(test)
    assert 0.3 < (theirs == _yte.numpy()).mean() < 0.95  # a problem with decisions to get wrong
    np.testing.assert_array_equal(ours, theirs)


def test_nearest_centroid_cosine_matches_numpy_and_never_predicts_absent_classes() -> None:
    xtr, ytr, xte, _yte = gaussian_clusters(5, 6, 10, 1, 30, 30, spread=0.8, dtype=torch.float64)
    reader = NearestCentroid().fit(xtr, ytr, n_classes=8)  # classes 6 and 7 have no sample
    train, test = xtr.reshape(len(xtr), -1).numpy(), xte.reshape(len(xte), -1).numpy()
    mean, std = train.mean(0), train.std(0)
    centroids = np.stack([((train[ytr.numpy() == c] - mean) / std).mean(0) for c in range(6)])
    z = (test - mean) / std
    cosine = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (
        centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    ).T
    scores = reader.scores(xte)
    np.testing.assert_allclose(scores[:, :6].numpy(), cosine, atol=1e-10)
    assert torch.isinf(scores[:, 6:]).all() and (scores[:, 6:] < 0).all()
    assert reader.predict(xte).max() < 6
    assert reader.scores(xte[:, 0]).shape == (len(xte), 8)  # [m, d] works as well as [m, 1, d]


@pytest.mark.parametrize("optimizer", ["lbfgs", "adamw"])
def test_linear_probe_matches_sklearn_logistic_regression(optimizer: str) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(1)
    centers = torch.randn(20, 32, generator=g) * 0.45
    ytr, yte = torch.arange(20).repeat_interleave(30), torch.arange(20).repeat_interleave(30)
    xtr = centers[ytr] + torch.randn(600, 32, generator=g)
    xte = centers[yte] + torch.randn(600, 32, generator=g)
    l2 = 1e-2
    probe = LinearProbe(l2=l2, optimizer=optimizer, batch_size=64).fit(xtr, ytr)  # type: ignore[arg-type]
    scaler = StandardScaler().fit(xtr.numpy())
    sk = LogisticRegression(C=1 / (l2 * len(ytr)), max_iter=5000).fit(scaler.transform(xtr.numpy()), ytr.numpy())
    ours = probe.predict(xte).eq(yte).float().mean().item()
    theirs = float((sk.predict(scaler.transform(xte.numpy())) == yte.numpy()).mean())
    assert 0.4 < theirs < 0.9  # neither trivial nor hopeless
    assert abs(ours - theirs) <= 0.03
    probs = probe.probabilities(xte)
    torch.testing.assert_close(probs.sum(1), torch.ones(600))
    if optimizer == "lbfgs":  # the same convex objective: the same optimum
        sk_probs = sk.predict_proba(scaler.transform(xte.numpy()))
        assert np.abs(probs.numpy() - sk_probs).max() < 0.01


def test_linear_probe_gives_absent_classes_zero_probability() -> None:
    xtr, ytr, xte, _ = gaussian_clusters(6, 4, 8, 2, 20, 10, spread=1.0, dtype=torch.float32)
    probe = LinearProbe().fit(xtr, ytr, n_classes=6)
    probs = probe.probabilities(xte)
    assert probs.shape == (40, 6) and probs[:, 4:].max().item() == 0.0
    torch.testing.assert_close(probs.sum(1), torch.ones(40))


def test_readers_refuse_bad_input_in_one_line() -> None:
    x, y = torch.randn(10, 2, 4), torch.arange(10) % 2
    cases: list[Callable[[], object]] = [
        lambda: NearestCentroid().fit(x, torch.zeros(10, dtype=torch.long)),  # K = 1
        lambda: NearestCentroid().fit(x[:0], y[:0]),  # empty
        lambda: LinearProbe().fit(x, y[:9]),  # lengths differ
        lambda: NearestCentroid().fit(x, y).scores(torch.randn(3, 2, 5)),  # width differs
        lambda: NearestCentroid().scores(x),  # not fitted
    ]
    for case in cases:
        with pytest.raises(InputError) as error:
            case()
        _one_line(error)


# -------------------------------------------------------------------------------------- interpreter


def test_interpreter_reads_what_a_centroid_cannot() -> None:
    xtr, ytr, xte, yte = antipodal()
    config = small(30, 64)
    model, log = train_interpreter(
        xtr, ytr, concept_ids=_ids(10), category=["a"] * 10, layers=[1, 2], config=config, progress=False
    )
    interpreter = model.predict(xte).eq(yte).float().mean().item()
    centroid = NearestCentroid().fit(xtr, ytr).predict(xte).eq(yte).float().mean().item()
    print(f"antipodal blobs, held-out top-1: interpreter {interpreter:.3f}, nearest centroid {centroid:.3f}")
    assert interpreter >= 0.9
    assert interpreter >= centroid + 0.3
    assert log.epochs == 30 and log.steps == 30 * math.ceil(400 / 64) and log.loss[-1] < log.loss[0]
    assert log.lr[0] == pytest.approx(1e-3, rel=0.01) and log.lr[-1] < 1e-5  # cosine annealed to ~0


def test_interpreter_on_easy_linear_data(flat_model: Interpreter, linear_data: tuple[Tensor, ...]) -> None:
    _xtr, _ytr, xte, yte = linear_data
    probs = flat_model.probabilities(xte)
    accuracy = probs.argmax(1).eq(yte).float().mean().item()
    print(f"gaussian clusters, held-out top-1: interpreter {accuracy:.3f}")
    assert accuracy > 0.9
    torch.testing.assert_close(probs.sum(1), torch.ones(len(yte)))
    conf = confidence(probs.double().numpy())
    assert ((conf >= 0) & (conf <= 1)).all() and conf.mean() > 0.5
    categories = flat_model.category_probabilities(xte)  # flat: the concept mass of each category
    index = torch.tensor(flat_model.concept_category)
    torch.testing.assert_close(categories, torch.zeros(len(yte), 3).index_add_(1, index, probs))
    assert flat_model.categories == ["noun.animal", "noun.artifact", "noun.food"]
    assert flat_model.concept_category == [0, 0, 0, 1, 1, 1, 2, 2]


def test_hierarchical_interpreter_knows_the_category_of_unseen_concepts(
    hierarchical_model: Interpreter, hierarchy: dict[str, Tensor | list[str]]
) -> None:
    x_held, y_held = hierarchy["x_held"], hierarchy["y_held"]
    assert isinstance(x_held, Tensor) and isinstance(y_held, Tensor)
    truth = torch.tensor(hierarchical_model.concept_category)[y_held]
    categories = hierarchical_model.predict_category(x_held)
    score = score_categories("hierarchical", categories.double().numpy(), truth.numpy())
    print(f"held-out concepts, category accuracy {score.accuracy:.3f} vs majority {score.majority:.3f}")
    assert score.accuracy >= score.majority + 0.4
    # the two-level factorisation: concept probabilities summed per category are the category head's
    probs = hierarchical_model.probabilities(x_held)
    summed = torch.zeros(len(y_held), 4).index_add_(1, truth.new_tensor(hierarchical_model.concept_category), probs)
    torch.testing.assert_close(summed, categories, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(y_held)))


def test_training_is_deterministic_and_leaves_the_callers_rng_alone(linear_data: tuple[Tensor, ...]) -> None:
    xtr, ytr, xte, _ = linear_data
    config = InterpreterConfig(d_model=16, heads=2, n_layers_encoder=1, epochs=3, batch_size=32)

    def train(seed: int) -> Tensor:
        cfg = InterpreterConfig(**{**config.__dict__, "seed": seed})
        model, _ = train_interpreter(xtr, ytr, concept_ids=_ids(8), category=["a"] * 8, config=cfg, progress=False)
        return model.probabilities(xte)

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = train(0)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(train(0), first)
    assert not torch.equal(train(1), first)


@pytest.mark.parametrize("which", ["flat", "hierarchical"])
def test_save_load_round_trip_is_bit_identical(
    which: str, flat_model: Interpreter, hierarchical_model: Interpreter, tmp_path: Path
) -> None:
    model = flat_model if which == "flat" else hierarchical_model
    x = torch.randn(50, model.n_layers, model.d, generator=torch.Generator().manual_seed(9)) * 2
    folder = model.save(tmp_path / "interp")
    assert sorted(p.name for p in folder.iterdir()) == sorted([META_FILE, TENSORS_FILE])  # no temporary files
    loaded = Interpreter.load(folder, device="cpu")
    assert torch.equal(loaded.probabilities(x), model.probabilities(x))
    assert torch.equal(loaded.category_probabilities(x), model.category_probabilities(x))
    assert (loaded.concept_ids, loaded.categories, loaded.layers) == (model.concept_ids, model.categories, model.layers)
    assert loaded.config == model.config and loaded.training_log == model.training_log
    assert isinstance(loaded.training_log, TrainingLog) and loaded.training_log.epochs == 20
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["format_version"] == 1 and meta["config"]["hierarchical"] == (which == "hierarchical")


def test_damaged_checkpoints_raise_one_line_input_errors(flat_model: Interpreter, tmp_path: Path) -> None:
    folder = flat_model.save(tmp_path / "interp")
    tensors = folder / TENSORS_FILE
    good = tensors.read_bytes()
    for damaged in (b"not a safetensors file at all", good[: len(good) // 2]):
        tensors.write_bytes(damaged)
        with pytest.raises(InputError) as error:
            Interpreter.load(folder)
        assert TENSORS_FILE in _one_line(error)
    tensors.write_bytes(good)
    (folder / META_FILE).write_text("{ truncated")
    with pytest.raises(InputError) as error:
        Interpreter.load(folder)
    assert META_FILE in _one_line(error)
    (folder / META_FILE).unlink()
    with pytest.raises(InputError) as error:
        Interpreter.load(folder)
    assert META_FILE in _one_line(error)


def test_augmentation_rescues_concepts_seen_once() -> None:
    """Six concepts with 30 samples, six seen once: the rare ones, scored on fresh samples."""
    g = torch.Generator().manual_seed(10)
    k, d, n_layers = 12, 16, 2
    centers = torch.randn(k, n_layers, d, generator=g)

    def draw(classes: Tensor, n: int) -> tuple[Tensor, Tensor]:
        y = classes.repeat_interleave(n)
        return centers[y] + 0.7 * torch.randn(len(y), n_layers, d, generator=g), y

    rich, rare = torch.arange(6), torch.arange(6, 12)
    (x_rich, y_rich), (x_rare, y_rare) = draw(rich, 30), draw(rare, 1)
    xtr, ytr = torch.cat([x_rich, x_rare]), torch.cat([y_rich, y_rare])
    xte, yte = draw(rare, 30)
    count = torch.bincount(ytr, minlength=k)
    mean = torch.zeros(k, n_layers, d).index_add_(0, ytr, xtr) / count.view(-1, 1, 1)
    variance = torch.zeros(k, n_layers, d).index_add_(0, ytr, (xtr - mean[ytr]) ** 2) / count.view(-1, 1, 1)
    assert variance[rare].abs().max() == 0  # seen once: no variance of their own
    config = small(30, 32)
    common = {"concept_ids": _ids(k), "category": ["a"] * k, "config": config, "progress": False}
    plain, plain_log = train_interpreter(xtr, ytr, **common)  # type: ignore[arg-type]
    augmented, log = train_interpreter(xtr, ytr, mean=mean, variance=variance, count=count, **common)  # type: ignore[arg-type]
    before = plain.predict(xte).eq(yte).float().mean().item()
    after = augmented.predict(xte).eq(yte).float().mean().item()
    print(f"concepts seen once, held-out top-1: plain {before:.3f}, augmented {after:.3f}")
    assert (plain_log.n_synthetic, log.n_synthetic, log.n_train) == (0, 6 * 4, len(ytr))
    assert after >= before + 0.15 and after > 0.6


def test_synthetic_samples_take_the_pooled_variance() -> None:
    k, n_layers, d = 3, 1, 2
    mean = torch.tensor([[[0.0, 0.0]], [[5.0, 5.0]], [[-5.0, 5.0]]])
    variance = torch.tensor([[[4.0, 1.0]], [[0.0, 0.0]], [[2.0, 0.5]]])
    count = torch.tensor([5, 1, 2])  # concept 0 is not rare; 1 and 2 are (below 3)
    samples, labels = synthesize(mean, variance, count, 20_000, 3, torch.Generator().manual_seed(0))
    assert sorted(set(labels.tolist())) == [1, 2] and samples.shape == (40_000, n_layers, d)
    pooled = (5 * variance[0] + 2 * variance[2]) / (4 + 1)  # within-concept variance, unbiased
    torch.testing.assert_close(samples[labels == 1].var(0), pooled, rtol=0.05, atol=0)
    torch.testing.assert_close(samples[labels == 2].var(0), (2 * variance[2] + pooled) / 2, rtol=0.05, atol=0)
    torch.testing.assert_close(samples[labels == 2].mean(0), mean[2], atol=0.05, rtol=0)
    assert k == len(mean)


def test_interpreter_refuses_bad_input_in_one_line(flat_model: Interpreter) -> None:
    x, y = torch.randn(10, 2, 4), torch.arange(10) % 3
    common = {"concept_ids": _ids(3), "category": ["a"] * 3, "progress": False}
    cases: list[Callable[[], object]] = [
        lambda: train_interpreter(x, y[:9], **common),  # type: ignore[arg-type]
        lambda: train_interpreter(x[:0], y[:0], **common),  # type: ignore[arg-type]
        lambda: train_interpreter(x, y % 1, concept_ids=["only"], category=["a"], progress=False),  # K < 2
        lambda: train_interpreter(x, y + 5, **common),  # type: ignore[arg-type]
        lambda: train_interpreter(x, y, mean=torch.zeros(3, 2, 4), **common),  # type: ignore[arg-type]
        lambda: train_interpreter(x, y, config=InterpreterConfig(augment=2), concept_ids=_ids(3), category=["a"] * 3),
        lambda: InterpreterConfig(d_model=30, heads=4).check(),
        lambda: flat_model.probabilities(torch.randn(3, 2, 7)),
    ]
    for case in cases:
        with pytest.raises(InputError) as error:
            case()
        _one_line(error)


def test_augmentation_ignores_concepts_without_samples() -> None:
    """A concept with count 0 (a held-out one) may have NaN statistics: it gets no samples and no error."""
    xtr, ytr, xte, _yte = gaussian_clusters(7, 4, 8, 1, 20, 10, spread=2.0, dtype=torch.float16)  # stored as float16
    keep = ytr != 3
    mean = torch.zeros(4, 1, 8).index_add_(0, ytr[keep], xtr[keep].float()) / 20
    mean[3] = math.nan
    count = torch.tensor([20, 20, 1, 0])
    model, log = train_interpreter(
        xtr[keep],
        ytr[keep],
        concept_ids=_ids(4),
        category=["a"] * 4,
        config=small(5, 16),
        mean=mean.half(),
        variance=torch.ones(4, 1, 8, dtype=torch.float16),
        count=count,
        progress=False,
    )
    assert log.n_synthetic == 4 and log.n_train == 60
    assert torch.isfinite(model.probabilities(xte)).all()
