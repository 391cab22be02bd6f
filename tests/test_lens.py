"""The logit lens and layer strategies (first cut; the analyzer and tuned lens come with issue 4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.core.layers import LayerStrategy, parse_layers, select_layers
from mechscope.lens.logit import LogitLens
from mechscope.lens.results import LensResult
from tests.conftest import PROMPTS

Loader = Callable[..., ms.LanguageModel]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "granitemoe"])
def test_last_layer_of_the_lens_is_the_models_prediction(load_tiny: Loader, family: str) -> None:
    lm = load_tiny(family)
    lens = LogitLens(lm)
    stacked, final = lens.layer_logits(PROMPTS)
    assert stacked.shape == (lm.arch.n_layers, 2, lm.arch.vocab)
    assert torch.equal(stacked[-1], final)
    results = lens.run(PROMPTS, top_k=3, track=["cat"])
    for row, result in enumerate(results):
        assert result.predicted.token_id == int(final[row].argmax())
        last = result.layer_predictions[-1]
        assert last.top[0].token_id == result.predicted.token_id
        assert last.kl_to_final == pytest.approx(0.0, abs=1e-5)
        assert result.emergence_layer is not None
        assert len(result.layer_predictions) == lm.arch.n_layers
        assert result.token_evolutions[0].token_id == result.predicted.token_id


def test_lens_result_round_trips_through_json(load_tiny: Loader) -> None:
    result = LogitLens(load_tiny("llama")).run(PROMPTS[:1], track=["cat", "The"])[0]
    again = LensResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.predicted_token == result.predicted.token


def test_lens_errors(load_tiny: Loader) -> None:
    with pytest.raises(ms.InputError, match="encoder"):
        LogitLens(load_tiny("bert"))
    lens = LogitLens(load_tiny("llama"))
    with pytest.raises(ms.SiteError, match="out of range"):
        lens.run(PROMPTS, layers=[7])
    with pytest.raises(ms.InputError, match="empty"):
        lens.run([""])


def test_layer_strategies() -> None:
    assert select_layers(12, LayerStrategy.EVENLY_SPACED, step=4) == [0, 4, 8, 11]
    assert select_layers(12, LayerStrategy.FIRST_MIDDLE_LAST) == [0, 6, 11]
    assert parse_layers("every:5", 12) == [0, 5, 10, 11]
    assert parse_layers("0,-1,3", 12) == [0, 3, 11]
    with pytest.raises(ms.SiteError, match="out of range"):
        parse_layers("12", 12)
    with pytest.raises(ms.SiteError, match="bad --layers"):
        parse_layers("every:x", 12)


def test_analyze_command_json(tiny_dir: Callable[[str], Path]) -> None:
    result = CliRunner().invoke(app, ["analyze", "-m", str(tiny_dir("qwen3")), "-p", "The cat is", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["layer_predictions"]) == 2 and data["predicted"]["token"]
    table = CliRunner().invoke(app, ["analyze", "-m", str(tiny_dir("qwen3")), "-p", "The cat is", "--layers", "1"])
    assert table.exit_code == 0 and "prediction:" in table.stdout


def test_async_analyzer_concurrent_calls_match_sequential(load_tiny: Loader) -> None:
    import asyncio

    analyzer = ms.ModelAnalyzer(load_tiny("llama"))
    config = ms.AnalysisConfig(
        layer_strategy=ms.LayerStrategy.EVENLY_SPACED, layer_step=1, top_k=3, track_tokens=["cat"]
    )
    prompts = [f"The cat number {i} is" for i in range(10)]
    sequential = [analyzer.analyze_sync(p, config) for p in prompts]

    async def concurrent() -> list[LensResult]:
        async with analyzer:
            return list(await asyncio.gather(*(analyzer.analyze(p, config) for p in prompts)))

    assert asyncio.run(concurrent()) == sequential
    batch = asyncio.run(analyzer.analyze_batch(prompts[:3], config))
    assert [r.predicted.token_id for r in batch] == [r.predicted.token_id for r in sequential[:3]]
    assert sequential[0].layer_predictions[0].layer_idx == 0


def test_tuned_lens_lowers_kl_on_held_out_organism_text(tmp_path: Path) -> None:
    from mechscope.lens.tuned import TunedLens, layer_kl
    from mechscope.zoo.corpus import text_documents

    lm = ms.load("toy")
    train = [d.text for d in text_documents(11, 400)]
    held_out = [d.text for d in text_documents(12, 100)]
    lens = TunedLens.fit(lm, train, steps=150)
    logit, tuned = layer_kl(lm, held_out), layer_kl(lm, held_out, lens)
    early = range(lm.arch.n_layers - 1)
    assert sum(tuned[i] for i in early) < 0.8 * sum(logit[i] for i in early)
    assert tuned[-1] == pytest.approx(logit[-1])  # the last layer has no translator
    with pytest.raises(ms.InputError, match="at least one text"):
        layer_kl(lm, [])  # not a silent row of zeros
    path = lens.save(tmp_path / "tuned.safetensors", model="toy")
    again = TunedLens.load(path, lm)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), lens.state_dict().values(), strict=True))
    result = LogitLens(lm, again).run(["The capital of France is"])[0]
    assert result.predicted_token == " Paris"
    with pytest.raises(ms.ModelLoadError, match="is for 4 layers"):
        TunedLens.load(path, _other_shape(tmp_path))


def _other_shape(tmp_path: Path) -> ms.LanguageModel:
    from mechscope.testing.tiny_models import build_tiny_model

    return ms.load(build_tiny_model("llama", tmp_path / "other"))


def test_compare_models(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from mechscope.lens.compare import compare
    from mechscope.testing.tiny_models import build_tiny_model

    base = ms.load(tiny_dir("llama"))
    same = compare(base, base, "The capital of France is")
    assert same.token_level and same.first_divergence is None
    assert all(row.kl_a_to_b == pytest.approx(0.0, abs=1e-6) for row in same.layers)
    other = ms.load(build_tiny_model("llama", tmp_path / "seed1", seed=1))
    diverged = compare(base, other, "The capital of France is")
    assert diverged.token_level and diverged.first_divergence is not None
    deeper = ms.load(build_tiny_model("llama", tmp_path / "deep", num_hidden_layers=4))
    aligned = compare(base, deeper, "The cat")
    assert [(r.layer_a, r.layer_b) for r in aligned.layers] == [(0, 0), (1, 3)]
    foreign = compare(base, ms.load("toy"), "The capital of France is")
    assert not foreign.token_level and "tokenizers" in (foreign.reason or "")
    page = tmp_path / "compare.html"
    command = ["compare", "--model1", str(tiny_dir("llama")), "--model2", str(tmp_path / "seed1"), "-p", "The cat"]
    result = CliRunner().invoke(app, [*command, "--html", str(page)])
    assert result.exit_code == 0 and "diverge" in result.stdout
    html = page.read_text()
    assert html.count('class="layer"') == 2 and 'data-same="false"' in html


def test_every_result_model_round_trips_through_json(load_tiny: Loader, tiny_dir: Callable[[str], Path]) -> None:
    from mechscope.checks.doctor import run_doctor
    from mechscope.lens.compare import compare
    from mechscope.lens.results import Comparison, LensGrid

    lm = load_tiny("llama")
    lens = LogitLens(lm)
    values = [
        lens.grid("The cat"),
        compare(lm, lm, "The cat"),
        run_doctor(ms.load(tiny_dir("gpt2"))),
        ms.AnalysisConfig(layer_strategy=ms.LayerStrategy.CUSTOM, layers=[0, 1], track_tokens=[" Paris"]),
    ]
    for value in values:
        assert type(value).model_validate_json(value.model_dump_json()) == value
    assert isinstance(values[0], LensGrid) and isinstance(values[1], Comparison)
