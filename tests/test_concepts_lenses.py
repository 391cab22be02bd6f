"""Concept lenses: the batched fit against scikit-learn, folding, calibration, storage, and monitoring on toy.

The toy measurements these assertions leave margin to (150 subjects of three relations, templates 0-2 to fit,
template 3 held out, one thread):

* mean-pooled sentence lenses at ``resid_post.2``: held-out AUROC mean 0.987 (min 0.84) — but read per
  token they name the subject on its own last token only 2% of the time (top-1): a sentence mean is not
  what a single token's state looks like;
* lenses on the subject's last token (``pooling="term_last"``) with background rows (the templates' other
  tokens and chat text) at ``resid_post.1``: held-out AUROC 1.00, and per token the subject's own last
  token names it top-1 for 99% of subjects (fires after calibration for 99%); ``resid_post.2``: 59%.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import mechscope as ms
from mechscope.concepts.lens_results import LensFitSummary, MonitorToken
from mechscope.concepts.lenses import (
    Lenses,
    calibrate,
    fit_lenses,
    fold_standardization,
    load_lenses,
    negative_concepts,
    standardization,
)
from mechscope.concepts.monitor import monitor, monitor_texts, token_states
from mechscope.concepts.pooling import pooled
from mechscope.errors import InputError
from mechscope.toyworld import assistant
from mechscope.toyworld.facts import CAPITAL, SOUND, SYMBOL

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

RELATIONS = (CAPITAL, SYMBOL, SOUND)


# --------------------------------------------------------------------------- synthetic


def _synthetic(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    """40 concepts in 5 sibling groups of 8, 32 dimensions, shifted and unevenly scaled (standardisation matters)."""
    generator = torch.Generator().manual_seed(seed)
    k, d = 40, 32
    centers = torch.randn(k, d, generator=generator) * 0.6
    scale = torch.ones(d)
    scale[0] = 10.0

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(k).repeat_interleave(n)
        return (centers[y] + torch.randn(len(y), d, generator=generator)) * scale + 5.0, y

    x, y = draw(30)
    x_eval, y_eval = draw(10)
    siblings = [[j for j in range(8 * (i // 8), 8 * (i // 8) + 8) if j != i] for i in range(k)]
    return x, y, x_eval, y_eval, siblings


def test_batched_fit_matches_sklearn_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, y, x_eval, y_eval, siblings = _synthetic()
    ids = [f"c{i}" for i in range(40)]
    l2 = 1e-2
    lenses = fit_lenses(x, y, ids, ids, siblings, n_random=5, l2=l2, held_out=(x_eval, y_eval))
    negatives = negative_concepts(siblings, 5, seed=0)
    mean, std = standardization(x)
    z, z_eval = ((x - mean) / std).numpy(), ((x_eval - mean) / std).numpy()
    labels, labels_eval = y.numpy(), y_eval.numpy()
    for k in (0, 9, 17, 26, 39):
        rows = np.r_[np.flatnonzero(labels == k), np.flatnonzero(np.isin(labels, negatives[k]))]
        target = (labels[rows] == k).astype(int)
        # our objective (balanced weights summing to 1, l2/2 |w|²) is sklearn's divided by C·n: C = 1 / (l2·n)
        reference = LogisticRegression(C=1 / (l2 * len(rows)), class_weight="balanced", max_iter=10_000, tol=1e-8)
        reference.fit(z[rows], target)
        w_standardised = lenses.W[:, k] * std  # unfold: the lens on standardised features
        cosine = torch.nn.functional.cosine_similarity(
            w_standardised, torch.tensor(reference.coef_[0], dtype=torch.float32), dim=0
        )
        assert float(cosine) > 0.9
        rows_eval = np.r_[np.flatnonzero(labels_eval == k), np.flatnonzero(np.isin(labels_eval, negatives[k]))]
        auc = roc_auc_score(labels_eval[rows_eval] == k, reference.decision_function(z_eval[rows_eval]))
        ours = lenses.auroc[k]
        assert ours is not None and abs(ours - auc) < 0.02
        # the folded lens on raw rows scores as sklearn does on standardised ones
        raw = lenses.scores(x[rows])[:, k].numpy()
        assert np.allclose(raw, reference.decision_function(z[rows]), atol=0.05 * np.abs(raw).max())


def test_folding_the_standardisation_gives_the_same_scores() -> None:
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(50, 16, generator=generator) * 3 + 2
    mean, std = standardization(h)
    w, c = torch.randn(16, 7, generator=generator), torch.randn(7, generator=generator)
    W, b = fold_standardization(w, c, mean, std)
    assert torch.allclose(h @ W + b, ((h - mean) / std) @ w + c, atol=1e-4)
    constant = torch.ones(10, 3)
    assert torch.equal(standardization(constant)[1], torch.ones(3))  # no division by zero


def test_negatives_are_siblings_then_seeded_random_others() -> None:
    siblings = [[1], [0], [3], [2]] + [[] for _ in range(6)]
    first = negative_concepts(siblings, 3, seed=4)
    assert first == negative_concepts(siblings, 3, seed=4)
    for i, group in enumerate(first):
        assert i not in group and group[: len(siblings[i])] == siblings[i]
        assert len(group) == len(siblings[i]) + 3 and len(set(group)) == len(group)
    assert negative_concepts([[1], [0]], 5) == [[1], [0]]  # nobody left to draw


def test_background_rows_keep_every_lens_low_on_them() -> None:
    x, y, _, _, siblings = _synthetic()
    generator = torch.Generator().manual_seed(3)
    away = torch.randn(32, generator=generator)
    # a cluster off to one side (as function-word tokens sit apart from subject tokens): plain lenses extrapolate
    background = x.mean(dim=0) + x.std(dim=0) * (
        8 * away / away.norm() + 0.3 * torch.randn(400, 32, generator=generator)
    )
    ids = [f"c{i}" for i in range(40)]
    plain = fit_lenses(x, y, ids, ids, siblings, n_random=5)
    guarded = fit_lenses(x, y, ids, ids, siblings, n_random=5, background=background)
    assert guarded.params["n_background"] == 400
    fired_plain = float((plain.scores(background) > 0).float().mean())
    fired_guarded = float((guarded.scores(background) > 0).float().mean())
    assert fired_guarded < 0.01 and fired_plain > 0.05  # measured 0.0001 and 0.12
    with pytest.raises(InputError, match="background"):
        fit_lenses(x, y, ids, ids, siblings, background=background[:, :5])


def test_calibrated_thresholds_are_the_neutral_quantile_and_bound_the_false_positives() -> None:
    x, y, _, _, siblings = _synthetic()
    ids = [f"c{i}" for i in range(40)]
    lenses = fit_lenses(x, y, ids, ids, siblings, n_random=5)
    neutral = torch.randn(3000, 32, generator=torch.Generator().manual_seed(2)) * 4 + 5
    fpr = 0.01
    calibrated = calibrate(lenses, neutral, fpr=fpr)
    scores = lenses.scores(neutral).double().numpy()
    expected = np.quantile(scores, 1 - fpr, axis=0)
    assert np.allclose(calibrated.threshold.numpy(), expected, rtol=1e-4, atol=1e-4)
    measured = (scores > calibrated.threshold.double().numpy()).mean(axis=0)
    assert measured.max() <= fpr + 1e-3
    assert calibrated.calibrated_fpr == fpr and lenses.calibrated_fpr is None  # a new object
    with pytest.raises(InputError, match="fpr"):
        calibrate(lenses, neutral, fpr=1.5)
    with pytest.raises(InputError, match="neutral"):
        calibrate(lenses, neutral[:, :3])


def test_fit_refuses_inputs_that_do_not_fit_together() -> None:
    x, y, _, _, siblings = _synthetic()
    ids = [f"c{i}" for i in range(40)]
    with pytest.raises(InputError, match="concept indices"):
        fit_lenses(x, y + 40, ids, ids, siblings)
    with pytest.raises(InputError, match="terms"):
        fit_lenses(x, y, ids, ids[:3], siblings)
    with pytest.raises(InputError, match=r"\[m, d\]"):
        fit_lenses(x, y[:5], ids, ids, siblings)


def test_save_and_load_round_trip_and_corrupt_files(tmp_path: Path) -> None:
    x, y, x_eval, y_eval, siblings = _synthetic()
    ids = [f"c{i}" for i in range(40)]
    lenses = fit_lenses(x, y, ids, [f"term {i}" for i in range(40)], siblings, held_out=(x_eval, y_eval))
    lenses = calibrate(replace_site(lenses), torch.randn(500, 32) * 4 + 5, fpr=0.05)
    folder = lenses.save(tmp_path / "lenses")
    assert sorted(p.name for p in folder.iterdir()) == ["lenses.json", "lenses.safetensors"]
    back = load_lenses(folder)
    assert torch.equal(back.W, lenses.W) and torch.equal(back.b, lenses.b)
    assert torch.equal(back.threshold, lenses.threshold)
    assert (back.concept_ids, back.terms, back.site, back.model) == (
        lenses.concept_ids,
        lenses.terms,
        "resid_post.2",
        "toy",
    )
    assert back.auroc == pytest.approx(lenses.auroc) and back.calibrated_fpr == 0.05
    meta = json.loads((folder / "lenses.json").read_text())
    assert meta["format_version"] == 1 and len(meta["scores"]) == 40
    assert LensFitSummary.model_validate({k: v for k, v in meta.items() if k not in ("kind", "format_version")})

    with pytest.raises(InputError, match="no lenses at"):
        load_lenses(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="no lenses at"):
        load_lenses(tmp_path / "file")
    with pytest.raises(InputError, match=r"no lenses\.safetensors in"):
        load_lenses(tmp_path)
    whole = (folder / "lenses.safetensors").read_bytes()
    (folder / "lenses.safetensors").write_bytes(whole[: len(whole) // 2])  # the header intact, the tensors cut
    with pytest.raises(InputError, match=r"lenses\.safetensors"):
        load_lenses(folder)
    (folder / "lenses.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="safetensors"):
        load_lenses(folder)
    lenses.save(folder)
    (folder / "lenses.json").write_text("{not json")
    with pytest.raises(InputError, match=r"lenses\.json. is corrupt"):
        load_lenses(folder)
    lenses.save(folder)
    meta["scores"] = meta["scores"][:5]
    meta["n_concepts"] = 5
    (folder / "lenses.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="disagree"):
        load_lenses(folder)


def replace_site(lenses: Lenses) -> Lenses:
    lenses.site, lenses.model = "resid_post.2", "toy"
    return lenses


# --------------------------------------------------------------------------- toy


@dataclass
class World:
    subjects: list[str]
    relation: list[int]
    siblings: list[list[int]]

    def sentences(self, templates: list[int]) -> tuple[list[str], list[str], torch.Tensor]:
        texts, terms, labels = [], [], []
        for i, subject in enumerate(self.subjects):
            for t in templates:
                texts.append(RELATIONS[self.relation[i]].templates[t].format(s=subject))
                terms.append(subject)
                labels.append(i)
        return texts, terms, torch.tensor(labels)


@pytest.fixture(scope="module")
def lm() -> Iterator[ms.LanguageModel]:
    yield ms.load("toy")


@pytest.fixture(scope="module")
def world() -> World:
    subjects: list[str] = []
    relation: list[int] = []
    for r, rel in enumerate(RELATIONS):
        for subject, _ in rel.facts:
            if subject not in subjects:
                subjects.append(subject)
                relation.append(r)
    k = len(subjects)
    siblings = [[j for j in range(k) if relation[j] == relation[i] and j != i] for i in range(k)]
    return World(subjects, relation, siblings)


def _chat_texts() -> tuple[list[str], list[str]]:
    """Ordinary text the toy knows (chit-chat and tool requests): one half for background, one for calibration."""
    rng = random.Random(0)
    chat = [f"{message} {reply}" for message, reply in assistant.CHAT_TEMPLATES]
    tools = [assistant.fill(rng, t)[0] for templates in assistant.TOOL_TEMPLATES.values() for t in templates]
    return chat[0::2] + tools[0::2], chat[1::2] + tools[1::2]


@pytest.fixture(scope="module")
def token_lenses(lm: ms.LanguageModel, world: World) -> Lenses:
    """Lenses on the subject's last token at resid_post.1, with background rows, calibrated on chat text."""
    site = "resid_post.1"
    texts, terms, y = world.sentences([0, 1, 2])
    x = pooled(lm, texts, [1], pooling="term_last", terms=terms)[1]
    background_texts, neutral_texts = _chat_texts()
    background = torch.cat([token_states(lm, texts, site, exclude=terms), token_states(lm, background_texts, site)])
    held_texts, held_terms, y_eval = world.sentences([3])
    x_eval = pooled(lm, held_texts, [1], pooling="term_last", terms=held_terms)[1]
    lenses = fit_lenses(
        x, y, world.subjects, world.subjects, world.siblings,
        held_out=(x_eval, y_eval), background=background, site=site, model=str(lm.source),
    )  # fmt: skip
    return calibrate(lenses, token_states(lm, neutral_texts, site), fpr=0.01)


def test_pooled_sentence_lenses_separate_held_out_templates(lm: ms.LanguageModel, world: World) -> None:
    site = "resid_post.2"
    texts, _, y = world.sentences([0, 1, 2])
    held_texts, _, y_eval = world.sentences([3])
    x, x_eval = pooled(lm, texts, [2])[2], pooled(lm, held_texts, [2])[2]
    lenses = fit_lenses(x, y, world.subjects, world.subjects, world.siblings, held_out=(x_eval, y_eval), site=site)
    summary = lenses.summary()
    assert summary.n_evaluated == len(world.subjects) and summary.mean_auroc is not None
    assert summary.mean_auroc > 0.95  # measured 0.987


def test_token_lenses_name_the_subject_on_its_last_token(
    lm: ms.LanguageModel, world: World, token_lenses: Lenses
) -> None:
    summary = token_lenses.summary()
    assert summary.mean_auroc is not None and summary.mean_auroc > 0.98  # measured 1.00
    texts, terms, y = world.sentences([3])  # a template the lenses never saw
    from mechscope.concepts.pooling import term_positions

    scores = monitor_texts(lm, token_lenses, texts)
    top1 = [
        int(s[term_positions(lm, t, term)[-1]].argmax()) == i
        for s, t, term, i in zip(scores, texts, terms, y.tolist(), strict=True)
    ]
    assert np.mean(top1) > 0.9  # measured 0.99


def test_monitor_names_france_on_its_token_and_keeps_the_generation(lm: ms.LanguageModel, token_lenses: Lenses) -> None:
    prompt = "The capital of France is"
    seen: list[MonitorToken] = []
    result = monitor(lm, token_lenses, prompt, max_new_tokens=6, top_k=5, on_token=seen.append)
    assert result.generated == lm.generate(prompt, max_new_tokens=6) and result.generated.startswith(" Paris")
    assert seen == result.tokens and [t.index for t in result.tokens] == list(range(len(result.tokens)))
    texts = [t.token for t in result.tokens]
    assert texts[:7] == ["<bos>", "The", " capital", " of", " F", "rance", " is"] and texts[7] == " Paris"
    assert len(result.generated_tokens()) == 6 and result.layer == 1 and result.site == "resid_post.1"
    rance = result.tokens[5]  # " France" is " F" + "rance": the state on "rance" has read the whole word
    assert rance.concepts[0].term == "France" and rance.concepts[0].fires


def test_monitor_scores_each_token_at_its_own_position(lm: ms.LanguageModel, token_lenses: Lenses) -> None:
    result = monitor(lm, token_lenses, "Listen! The cat says", max_new_tokens=5, top_k=3)
    ids = torch.tensor([[t.token_id for t in result.tokens]])
    with lm.capture(["resid_post.1"]) as cache:
        lm.forward(ids)  # the whole sequence at once, no KV cache
    reference = token_lenses.scores(cache["resid_post.1"][0])
    for token in result.tokens:
        expected = reference[token.index].topk(3)
        assert [hit.id for hit in token.concepts] == [token_lenses.concept_ids[i] for i in expected.indices.tolist()]
        assert [hit.score for hit in token.concepts] == pytest.approx(expected.values.tolist(), abs=1e-3)
        margin = token.concepts[0].score - float(token_lenses.threshold[token_lenses.index(token.concepts[0].id)])
        assert token.concepts[0].margin == pytest.approx(margin)


def test_monitor_options_and_hooks_removed_even_when_on_token_raises(
    lm: ms.LanguageModel, token_lenses: Lenses
) -> None:
    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())

    before = hooks()
    only_new = monitor(lm, token_lenses, "The sound a dog makes is", max_new_tokens=3, include_prompt=False)
    assert all(t.generated for t in only_new.tokens) and len(only_new.tokens) == 3
    unread = monitor(lm, token_lenses, "The sound a dog makes is", max_new_tokens=3, read_last=False)
    assert len(unread.generated_tokens()) == 2  # generate never feeds its last token back
    assert hooks() == before

    def boom(token: MonitorToken) -> None:
        if token.generated:
            raise RuntimeError("display broke")

    with pytest.raises(RuntimeError, match="display broke"):
        monitor(lm, token_lenses, "The sound a dog makes is", max_new_tokens=3, on_token=boom)
    assert hooks() == before
    assert lm.generate("The sound a dog makes is", max_new_tokens=1) == " woof"


def test_monitor_refuses_lenses_that_do_not_fit(lm: ms.LanguageModel, token_lenses: Lenses) -> None:
    narrow = Lenses(
        W=torch.zeros(8, 2), b=torch.zeros(2), threshold=torch.zeros(2), concept_ids=["a", "b"], terms=["a", "b"],
        site="resid_post.1",
    )  # fmt: skip
    with pytest.raises(InputError, match="width"):
        monitor(lm, narrow, "The capital of France is", max_new_tokens=1)
    sited = Lenses(W=torch.zeros(128, 1), b=torch.zeros(1), threshold=torch.zeros(1), concept_ids=["a"], terms=["a"])
    with pytest.raises(InputError, match="site"):
        monitor_texts(lm, sited, ["a b"])
    with pytest.raises(InputError, match="pooling"):
        pooled(lm, ["a b"], [1], pooling="max")
    with pytest.raises(InputError, match="does not occur"):
        pooled(lm, ["a b"], [1], pooling="term", terms=["zebra"])
    rows = monitor_texts(lm, token_lenses, ["The capital of France is", "Rain"])
    lengths = [len(ids) for ids in lm.tokenizer(["The capital of France is", "Rain"])["input_ids"]]
    assert [tuple(r.shape) for r in rows] == [(n, token_lenses.n_concepts) for n in lengths] and lengths[0] == 7
