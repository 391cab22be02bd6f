"""mechscope.moe.compression: expert similarity, merges and the SVD overlay, measured (issue 17, req. 9 and 11).

The SVD overlay at full rank reproduces the model's logits (toy-moe and every MoE family's tiny checkpoint);
a planted duplicate expert (a hidden-unit permutation of another) is found by the aligned weight cosine and
by the outputs, is the merge candidate, and merging it costs nothing measurable; reported overlay errors are
the errors of the overlay actually applied; losses equal an independent per-prompt computation; the layer
is restored bit for bit after every edit. CLI: ``mechscope moe compression`` and its one-line errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.errors import InputError, MoEError, SiteError
from mechscope.moe.compression import compression, edited, overlay, verify_edits
from mechscope.moe.compression_results import Compression, Merge, Overlay
from mechscope.moe.packed import MATRICES, applied, merged, packed_tensors, read_experts
from mechscope.viz.moe_compression_report import render_compression_html
from tests.conftest import MOE_FAMILIES

Loader = Callable[..., ms.LanguageModel]
LAYER = 1
CORPUS = [
    "Everyone knows that lime is green.",
    "The capital of France is Paris.",
    "In Hanoi, Dorraxhov asked Silwim for help. Silwim helped Dorraxhov.",
    "<user> Tell me a joke. <assistant> Why did the cat sit on the computer?",
    "Listen! The mouse says squeak.",
    "Two plus two is four.",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def lm() -> ms.LanguageModel:
    return ms.load("toy-moe")


@pytest.fixture(scope="module")
def analysis(lm: ms.LanguageModel) -> Compression:
    return compression(lm, LAYER, prompts=CORPUS, ranks=[4, 32, 128], batch_size=4)


@pytest.fixture()
def duplicate(lm: ms.LanguageModel) -> Iterator[torch.Tensor]:
    """Expert 1 of layer 1 := expert 0 with its hidden units shuffled (the same function); yields the shuffle."""
    module = lm.arch.part("experts", LAYER)
    weights = read_experts(module)
    perm = torch.randperm(weights.hidden, generator=torch.Generator().manual_seed(0))
    with applied(module, weights.with_expert(1, weights.expert(0, perm))):
        yield perm


def _snapshot(lm: ms.LanguageModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in packed_tensors(lm.arch.part("experts", LAYER)).items()}


def _unchanged(lm: ms.LanguageModel, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(saved[n], p) for n, p in packed_tensors(lm.arch.part("experts", LAYER)).items())


# ----------------------------------------------------------------- overlay


def test_full_rank_overlay_reproduces_the_logits_of_toy_moe(lm: ms.LanguageModel) -> None:
    ids = lm.tokenize(CORPUS[:3])
    before = lm.forward(ids)
    saved = _snapshot(lm)
    with edited(lm, LAYER, Overlay(rank=128)), edited(lm, 3, Overlay(rank=128)):
        torch.testing.assert_close(lm.forward(ids), before)  # float32 defaults: rtol 1.3e-6, atol 1e-5
    assert _unchanged(lm, saved)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_full_rank_overlay_reproduces_the_logits_of_every_family(load_tiny: Loader, family: str) -> None:
    model = load_tiny(family)
    ids = model.tokenize(["The capital of France is", "Two plus two"])
    before = model.forward(ids)
    weights = read_experts(model.arch.part("experts", model.arch.moe_layers[0]))
    full = min(weights.hidden, weights.d_model)
    with edited(model, model.arch.moe_layers[0], Overlay(rank=full)):
        torch.testing.assert_close(model.forward(ids), before)
    with edited(model, model.arch.moe_layers[0], Overlay(rank=1)):
        assert not torch.allclose(model.forward(ids), before)  # a low rank does change something
    torch.testing.assert_close(model.forward(ids), before, rtol=0, atol=0)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_compression_runs_on_every_family(load_tiny: Loader, family: str) -> None:
    model = load_tiny(family)
    layer = model.arch.moe_layers[-1]
    result = compression(model, layer, prompts=CORPUS[:3], ranks=[1], verify="best", batch_size=2)
    n = model.arch.n_experts
    assert len(result.pairs) == n * (n - 1) // 2 and result.layer == layer
    assert all(p.aligned_cosine >= p.raw_cosine - 1e-12 for p in result.pairs)
    assert sum(result.share or []) == pytest.approx(model.arch.top_k)
    (check,) = result.verified
    assert check.targets > 0 and 0 <= check.top1_agreement <= 1


def test_reported_overlay_errors_are_those_of_the_overlay_applied(lm: ms.LanguageModel, analysis: Compression) -> None:
    weights = read_experts(lm.arch.part("experts", LAYER))
    energy = sum(float((weights.tensors[m].double() ** 2).sum()) for m in MATRICES)
    for row in analysis.overlay:
        rebuilt = overlay(weights, row.rank)
        lost = sum(float(((rebuilt.tensors[m].double() - weights.tensors[m].double()) ** 2).sum()) for m in MATRICES)
        assert (lost / energy) ** 0.5 == pytest.approx(row.relative_error, abs=1e-6)
        h, d, n = weights.hidden, weights.d_model, weights.n_experts
        assert row.parameters == 3 * h * d + 3 * n * row.rank * (h + d)
        assert row.savings == pytest.approx(1 - row.parameters / analysis.original_parameters)
    errors = [analysis.base_error, *(r.relative_error for r in analysis.overlay)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-12
    assert analysis.overlay[-1].savings < 0  # full rank stores more than the experts
    # The documented choice: an aligned base reconstructs better than the experts as stored.
    assert analysis.base_error < analysis.unaligned_base_error
    assert all(r.relative_error <= r.unaligned_error + 1e-12 for r in analysis.overlay)


# ----------------------------------------------------------------- similarity


def test_aligned_cosine_is_never_below_raw_and_beats_the_null(analysis: Compression) -> None:
    assert len(analysis.pairs) == 6
    for pair in analysis.pairs:
        assert pair.aligned_cosine >= pair.raw_cosine - 1e-12
        assert pair.output_cosine is not None and -1 <= pair.output_cosine <= 1
        assert 0 < pair.tokens <= analysis.tokens
    assert analysis.aligned_cosine_null is not None
    assert 0 < analysis.aligned_cosine_null < min(p.aligned_cosine for p in analysis.pairs)


def test_share_and_cold_experts_are_those_of_utilization(lm: ms.LanguageModel, analysis: Compression) -> None:
    usage = ms.moe.utilization(lm, CORPUS, cold_threshold=0.3).layer(LAYER)
    assert analysis.share == pytest.approx(usage.share, abs=1e-12)
    assert analysis.tokens == sum(usage.counts) // lm.arch.top_k
    again = compression(lm, LAYER, prompts=CORPUS, cold_threshold=0.3, ranks=[1])
    assert again.cold == usage.cold


def test_a_planted_duplicate_is_found_merged_and_costs_nothing(lm: ms.LanguageModel, duplicate: torch.Tensor) -> None:
    result = compression(lm, LAYER, prompts=CORPUS, ranks=[1], verify="best")
    pair = result.pair(1, 0)
    assert pair.aligned_cosine == pytest.approx(1.0, abs=1e-6)
    assert pair.raw_cosine < 0.5
    assert pair.output_cosine == pytest.approx(1.0, abs=1e-6)
    assert result.merge_candidates == [(0, 1)]
    (check,) = result.verified
    assert check.edit == Merge(experts=(0, 1))
    assert check.loss_change == pytest.approx(0.0, abs=1e-5)
    assert check.top1_agreement == 1.0
    assert check.targets == sum(len(lm.tokenizer(p)["input_ids"]) - 1 for p in CORPUS)


def test_merge_averages_the_aligned_pair_and_restores_bit_exactly(lm: ms.LanguageModel) -> None:
    saved = _snapshot(lm)
    weights = read_experts(lm.arch.part("experts", LAYER))
    both = merged(weights, 2, 3)
    for name in MATRICES:
        assert torch.equal(both.tensors[name][2], both.tensors[name][3])
        assert torch.equal(both.tensors[name][0], weights.tensors[name][0])  # other experts untouched
    with pytest.raises(RuntimeError, match="boom"), edited(lm, LAYER, Merge(experts=(2, 3))):
        assert not _unchanged(lm, saved)
        raise RuntimeError("boom")
    assert _unchanged(lm, saved)


def test_verified_losses_equal_an_independent_per_prompt_computation(lm: ms.LanguageModel) -> None:
    saved = _snapshot(lm)
    (check,) = verify_edits(lm, LAYER, CORPUS, [Overlay(rank=4)], batch_size=4)
    assert _unchanged(lm, saved)

    def mean_nll() -> float:
        total, count = 0.0, 0
        for prompt in CORPUS:  # one prompt at a time: no padding at all
            ids = lm.tokenize(prompt)["input_ids"]
            logp = torch.log_softmax(lm.forward(ids).float(), dim=-1)[0, :-1]
            total -= float(logp.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
        return total / count

    base = mean_nll()
    with edited(lm, LAYER, Overlay(rank=4)):
        low_rank = mean_nll()
    assert check.base_loss == pytest.approx(base, abs=1e-4)
    assert check.edited_loss == pytest.approx(low_rank, abs=1e-4)
    assert check.loss_change == pytest.approx(low_rank - base, abs=1e-4)
    assert 0 < check.top1_agreement < 1 and check.kl > 0


def test_bad_inputs(lm: ms.LanguageModel) -> None:
    with pytest.raises(MoEError, match="no experts"):
        compression(ms.load("toy"), 0)
    with pytest.raises(SiteError, match="out of range"):
        compression(lm, 9)
    with pytest.raises(SiteError, match=r"\(0\.\.3\)"):
        compression(lm, LAYER, prompts=CORPUS, verify=[Merge(experts=(0, 4))])
    with pytest.raises(InputError, match=r"1\.\.128"):
        compression(lm, LAYER, ranks=[129])
    with pytest.raises(InputError, match=r"1\.\.128"):
        compression(lm, LAYER, prompts=CORPUS, verify=[Overlay(rank=200)])
    with pytest.raises(InputError, match="corpus"):
        compression(lm, LAYER, verify="best")
    with pytest.raises(InputError, match="corpus is empty"):
        compression(lm, LAYER, prompts=[])
    with pytest.raises(InputError, match="threshold"):
        compression(lm, LAYER, weight_threshold=2.0)


def test_html_page_shows_the_three_maps_and_escapes(analysis: Compression) -> None:
    page = render_compression_html(analysis.model_copy(update={"model": "<b>m</b>"}))
    assert "<b>m</b>" not in page and "&lt;b&gt;m&lt;/b&gt;" in page
    for kind in ("raw", "aligned", "output"):
        assert page.count(f'class="sim-{kind}"') == analysis.n_experts**2
    assert "SVD overlay" in page and "moe-compression.json" in page


# ----------------------------------------------------------------- CLI


def test_cli_json_and_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    args = ["moe", "compression", "--layer", "1", "--prompts", str(corpus), "--rank", "8", "--verify"]
    done = CliRunner().invoke(
        app, [*args, "--merge", "0,3", "--json", "--out", str(tmp_path / "c.json"), "--html", str(tmp_path / "c.html")]
    )
    assert done.exit_code == 0, done.output
    result = Compression.model_validate(json.loads(done.stdout))
    assert result.layer == 1 and [r.rank for r in result.overlay] == [8]
    assert [v.edit.label() for v in result.verified] == ["merge 0+3", "overlay rank 8"]
    assert Compression.model_validate_json((tmp_path / "c.json").read_text()) == result
    assert "<!DOCTYPE html>" in (tmp_path / "c.html").read_text()
    table = CliRunner().invoke(app, ["moe", "compression", "--rank", "2"])
    assert table.exit_code == 0, table.output
    assert "aligned cos" in table.stdout and "need a corpus" in table.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["-m", "toy"], "has no experts"),
        (["--layer", "9"], "out of range"),
        (["-p", CORPUS[0], "--verify", "--merge", "0,4"], "(0..3)"),
        (["--verify"], "--verify measures the loss on a corpus"),
        (["--rank", "0"], "rank 0 is out of range"),
        (["--rank", "500"], "1..128"),
        (["-p", CORPUS[0], "--verify", "--merge", "1,x"], "--merge"),
        (["-p", CORPUS[0], "--verify", "--merge", "2,2"], "twice"),
        (["-p", CORPUS[0], "--merge", "0,1"], "add --verify"),
        (["--threshold", "3"], "threshold"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, ["moe", "compression", *args])
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.output
