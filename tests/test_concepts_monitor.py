"""Lenses fitted from an encyclopedia of `toy`'s world name the subject on its own token while it generates.

Measured (toy, 161 concepts: countries, elements, animals, colours; stage 1 with three toy templates each):
with ``term_last`` pooling at layer 1, every one of 38 probed subjects is the top concept on its own last
token (held-out AUROC 0.9998 mean); lenses of sentence means at the same layer name 6 of 38.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.concepts import refine
from mechscope.concepts.bootstrap import bootstrap
from mechscope.concepts.fit import fit_from_encyclopedia
from mechscope.concepts.lens_results import MonitorToken
from mechscope.concepts.lenses import Lenses
from mechscope.concepts.monitor import monitor
from mechscope.concepts.pooling import term_positions
from mechscope.concepts.sources import toyworld_concepts
from mechscope.errors import InputError
from mechscope.toyworld.facts import CAPITAL, SOUND, SYMBOL

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = (
    (CAPITAL, "The capital of {s} is"),
    (SYMBOL, "The chemical symbol of {s} is"),
    (SOUND, "The sound a {s} makes is"),
)


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


def _encyclopedia(toy: ms.LanguageModel, folder: Path, pooling: str) -> Path:
    out = folder / f"{pooling}.h5"
    enc = bootstrap(toy, toyworld_concepts(), out, layers=[1, 2], pooling=pooling, progress=False)
    refine.refine(toy, out, refine.template_contexts(enc, range(len(enc)), 3, held_out=1), 1)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitor")


@pytest.fixture(scope="module")
def lenses(toy: ms.LanguageModel, folder: Path) -> Lenses:
    return fit_from_encyclopedia(toy, _encyclopedia(toy, folder, "term_last"), 1)


def _named(toy: ms.LanguageModel, lenses: Lenses) -> tuple[int, int]:
    hits = total = 0
    for relation, template in PROMPTS:
        for subject, _ in relation.facts[::4]:
            prompt = template.format(s=subject)
            result = monitor(toy, lenses, prompt, max_new_tokens=2, top_k=3)
            top = result.tokens[term_positions(toy, prompt, subject)[-1]].concepts[0]
            hits += top.term == subject
            total += 1
    return hits, total


def test_lenses_name_the_country_element_or_animal_on_its_token(toy: ms.LanguageModel, lenses: Lenses) -> None:
    summary = lenses.summary()
    assert summary.n_concepts == 161 and summary.site == "resid_post.1"
    assert summary.mean_auroc is not None and summary.mean_auroc > 0.99
    hits, total = _named(toy, lenses)
    assert total == 38 and hits >= 36, (hits, total)


def test_sentence_mean_lenses_do_not_name_it_token_by_token(toy: ms.LanguageModel, folder: Path) -> None:
    hits, total = _named(toy, fit_from_encyclopedia(toy, _encyclopedia(toy, folder, "mean"), 1))
    assert hits <= total // 2, (hits, total)  # measured 6 of 38: why monitoring lenses use term_last pooling


def test_monitoring_changes_nothing_and_reads_every_token(toy: ms.LanguageModel, lenses: Lenses) -> None:
    prompt = "The capital of France is"
    result = monitor(toy, lenses, prompt, max_new_tokens=4)
    assert result.generated == toy.generate(prompt, max_new_tokens=4)
    n_prompt = len(toy.tokenizer(prompt)["input_ids"])
    assert len(result.tokens) == n_prompt + len(result.generated_tokens())
    france = result.tokens[term_positions(toy, prompt, "France")[-1]]
    assert france.concepts[0].id == "toy:country:France" and france.concepts[0].fires


def test_live_reading_and_reading_after_generation_agree(toy: ms.LanguageModel, lenses: Lenses) -> None:
    prompt = "The sound a cat makes is"
    seen: list[MonitorToken] = []
    live = monitor(toy, lenses, prompt, max_new_tokens=5, on_token=seen.append)  # one product per pass
    after = monitor(toy, lenses, prompt, max_new_tokens=5)  # one product for every token at the end
    assert seen == live.tokens and live.generated == after.generated
    assert [t.token_id for t in live.tokens] == [t.token_id for t in after.tokens]
    for one, other in zip(live.tokens, after.tokens, strict=True):
        assert [h.id for h in one.concepts] == [h.id for h in other.concepts]
        assert [h.score for h in one.concepts] == pytest.approx([h.score for h in other.concepts], abs=1e-4)


@pytest.mark.parametrize("read_last", [True, False])
def test_without_the_prompt_live_and_after_generation_list_the_same_tokens(
    toy: ms.LanguageModel, lenses: Lenses, read_last: bool
) -> None:
    prompt = "The capital of Peru is"
    kwargs = {"max_new_tokens": 3, "min_new_tokens": 3, "include_prompt": False, "read_last": read_last}
    seen: list[MonitorToken] = []
    live = monitor(toy, lenses, prompt, on_token=seen.append, **kwargs)
    after = monitor(toy, lenses, prompt, **kwargs)
    n_prompt = len(toy.tokenizer(prompt)["input_ids"])
    assert seen == live.tokens and all(token.generated for token in after.tokens)
    assert [t.index for t in after.tokens] == [t.index for t in live.tokens]
    assert [t.index for t in after.tokens] == list(range(n_prompt, n_prompt + 3 - (0 if read_last else 1)))
    assert [t.token for t in after.tokens] == toy.token_texts([t.token_id for t in after.tokens])
    for one, other in zip(live.tokens, after.tokens, strict=True):
        assert [h.id for h in one.concepts] == [h.id for h in other.concepts]
        assert [h.margin for h in one.concepts] == pytest.approx([h.margin for h in other.concepts], abs=1e-4)


def test_the_cli_fits_lenses_and_monitors_in_json_lines(toy: ms.LanguageModel, folder: Path) -> None:
    data = folder / "term_last.h5"
    runner = CliRunner()
    fitted = runner.invoke(app, ["concepts", "lenses", "fit", "-m", "toy", "--data", str(data), "-l", "1",
                                 "-o", str(folder / "lenses"), "--json"])  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    assert json.loads(fitted.output)["n_concepts"] == 161
    shown = runner.invoke(app, ["concepts", "monitor", "-m", "toy", "--lenses", str(folder / "lenses"),
                                "-p", "The chemical symbol of iron is", "-n", "3", "--json"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    lines = [json.loads(line) for line in shown.output.strip().splitlines()]
    tokens, final = lines[:-1], lines[-1]
    assert final["generated"] == toy.generate("The chemical symbol of iron is", max_new_tokens=3)
    iron = tokens[term_positions(toy, "The chemical symbol of iron is", "iron")[-1]]
    assert iron["concepts"][0]["id"] == "toy:element:iron"
    steer = runner.invoke(app, ["concepts", "steer", "-m", "toy", "--data", str(data), "--concept", "toy:animal:cat",
                                "-l", "1", "-p", "The sound a dog makes is", "-c", "2", "--json"])  # fmt: skip
    assert steer.exit_code == 0, steer.output
    assert json.loads(steer.output)["site"] == "resid_post.1"


def test_bad_lens_input_is_one_line(toy: ms.LanguageModel, folder: Path) -> None:
    data = folder / "term_last.h5"
    with pytest.raises(InputError, match="not in this encyclopedia"):
        fit_from_encyclopedia(toy, data, 3)
    with pytest.raises(InputError, match="negatives are siblings and/or random"):
        fit_from_encyclopedia(toy, data, 1, negatives={"cousins"})


@pytest.mark.parametrize(("rows", "n", "k"), [(73, 10_000, 5), (20, 641, 1), (3, 1_300, 12), (1, 5_000, 5)])
def test_the_blockwise_top_k_is_torchs_top_k(rows: int, n: int, k: int) -> None:
    from mechscope.concepts.monitor import _top_k

    scores = torch.randn(rows, n, generator=torch.Generator().manual_seed(n))
    scores[0, -1] = 100.0  # the best score in the last, partial block
    values, indices = _top_k(scores, k)
    expected = scores.topk(k, dim=-1)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)
    assert int(indices[0, 0]) == n - 1


def test_many_lenses_read_after_generation_as_they_read_live(toy: ms.LanguageModel) -> None:
    k = 2_000  # enough blocks of scores for the blockwise top-k after generation (live passes use topk)
    generator = torch.Generator().manual_seed(0)
    lenses = Lenses(
        W=torch.randn(toy.arch.d_model, k, generator=generator),
        b=torch.randn(k, generator=generator),
        threshold=torch.zeros(k),
        concept_ids=[f"c{i}" for i in range(k)],
        terms=[f"c{i}" for i in range(k)],
        site="resid_post.2",
        model="toy",
    )
    live = monitor(toy, lenses, "The capital of Peru is", max_new_tokens=4, top_k=7, on_token=lambda token: None)
    after = monitor(toy, lenses, "The capital of Peru is", max_new_tokens=4, top_k=7)
    assert len(after.tokens) == len(live.tokens) > 8
    for one, other in zip(live.tokens, after.tokens, strict=True):
        assert [h.id for h in one.concepts] == [h.id for h in other.concepts]
        assert [h.score for h in one.concepts] == pytest.approx([h.score for h in other.concepts], abs=1e-4)
