"""``steer compare``: a trained vector vs the difference-of-means vector, per layer, with validation perplexities."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError
from mechscope.steering.compare_results import COLUMNS, VectorComparison
from mechscope.steering.comparison import compare_vectors
from mechscope.steering.directions import diff_of_means
from mechscope.steering.trainer import train
from mechscope.steering.vector import SteeringVector
from mechscope.testing.tiny_models import build_tiny_model
from mechscope.viz.steer_compare_report import render_steer_compare_html
from mechscope.zoo import corpus

LAYER = 2


def _texts(templates: Sequence[str]) -> list[str]:
    return sorted({(s := t.format(t=topic))[0].upper() + s[1:] for t in templates for topic in corpus._TOPICS})


PIRATE = ["<pirate> " + t for t in _texts(corpus._PIRATE)]
FORMAL = ["<formal> " + t for t in _texts(corpus._FORMAL)]


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def run(lm: LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A pirate vector trained on completions of an empty prompt (no marker), from a JSONL file."""
    folder = tmp_path_factory.mktemp("compare")
    records = [{"prompt": "", "completion": " " + text} for text in _texts(corpus._PIRATE)]
    data = folder / "pirate.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "pos.txt").write_text("\n".join(PIRATE) + "\n")
    (folder / "neg.txt").write_text("\n".join(FORMAL) + "\n")
    result = train(lm, data, layer=LAYER, out=folder / "run", epochs=3, lr=1.0, val_tokens=60)
    return {"folder": folder, "data": data, "out": folder / "run", "result": result}


@pytest.fixture(scope="module")
def comparison(lm: LanguageModel, run: dict[str, Any]) -> VectorComparison:
    return compare_vectors(lm, run["out"], PIRATE, FORMAL, data=run["data"])


def test_cosines_match_numpy_and_the_trained_layer_is_positive(
    lm: LanguageModel, run: dict[str, Any], comparison: VectorComparison
) -> None:
    trained = SteeringVector.from_pretrained(run["out"], lm).vector.double().numpy()
    directions = diff_of_means(lm, PIRATE, FORMAL)
    assert [row.layer for row in comparison.layers] == list(range(lm.arch.n_layers))
    for row in comparison.layers:
        other = directions[row.layer].vector.double().numpy()
        expected = float(trained @ other / (np.linalg.norm(trained) * np.linalg.norm(other)))
        assert row.cosine == pytest.approx(expected, abs=1e-6)
        assert row.diff_norm == pytest.approx(float(np.linalg.norm(other)), rel=1e-5)
        assert row.trained_layer == (row.layer == LAYER)
    assert comparison.at_trained_layer().cosine > 0.05  # measured: see the report
    assert comparison.trained_norm == pytest.approx(float(np.linalg.norm(trained)), rel=1e-5)


def test_perplexities(run: dict[str, Any], comparison: VectorComparison) -> None:
    ppls = (comparison.vanilla_ppl, comparison.trained_ppl, comparison.diff_ppl, comparison.diff_rescaled_ppl)
    assert all(p is not None for p in ppls)
    assert comparison.trained_ppl < comparison.vanilla_ppl  # type: ignore[operator]
    # the same split as training: the same vanilla and steered perplexities the run reported
    assert comparison.vanilla_ppl == pytest.approx(run["result"].vanilla_ppl, rel=1e-4)
    assert comparison.trained_ppl == pytest.approx(run["result"].steered_ppl, rel=1e-4)
    assert comparison.data == str(run["data"]) and comparison.val_examples == run["result"].data.val_examples


def test_layers_option_keeps_the_trained_layer(lm: LanguageModel, run: dict[str, Any]) -> None:
    result = compare_vectors(lm, run["out"], PIRATE[:4], FORMAL[:4], layers=[0], data=run["data"])
    assert [row.layer for row in result.layers] == [0, LAYER]


def test_other_or_missing_data_is_one_line(lm: LanguageModel, run: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text(run["data"].read_text() + json.dumps({"prompt": "", "completion": " Arr"}) + "\n")
    with pytest.raises(InputError, match="differs from the run's"):
        compare_vectors(lm, run["out"], PIRATE, FORMAL, data=other)
    with pytest.raises(InputError, match="is gone"):
        compare_vectors(lm, run["out"], PIRATE, FORMAL, data=tmp_path / "nope.jsonl")
    # The run records its data file, so the comparison finds it without --data.
    assert compare_vectors(lm, run["out"], PIRATE, FORMAL) == compare_vectors(
        lm, run["out"], PIRATE, FORMAL, data=run["data"]
    )
    records = [json.loads(line) for line in run["data"].read_text().splitlines()]
    in_memory = train(lm, records, layer=LAYER, out=tmp_path / "mem", epochs=1, lr=1.0, val_tokens=60)
    assert in_memory.out is not None
    with pytest.raises(InputError, match="records no training data path"):
        compare_vectors(lm, in_memory.out, PIRATE, FORMAL)
    with pytest.raises(InputError, match="at least one positive"):
        compare_vectors(lm, run["out"], [], FORMAL, data=run["data"])


def test_parquet_round_trips(comparison: VectorComparison, tmp_path: Path) -> None:
    path = comparison.to_parquet(tmp_path / "compare.parquet")
    table = pq.read_table(path)
    assert table.column_names == list(COLUMNS) and table.num_rows == len(comparison.layers)
    rows = table.to_pylist()
    assert rows == comparison.rows()
    own = [row for row in rows if row["is_trained_layer"]]
    assert len(own) == 1 and own[0]["diff_of_means_ppl"] == comparison.diff_ppl
    assert all(row["diff_of_means_ppl"] is None for row in rows if not row["is_trained_layer"])


def test_html_escapes_hostile_strings(comparison: VectorComparison) -> None:
    hostile = comparison.model_copy(update={"model": "<script>alert(1)</script>", "data": '"><img src=x>'})
    page = render_steer_compare_html(hostile)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "<img src=x>" not in page
    assert "Cosine by layer" in page and "Validation perplexity" in page and "<svg" in page


def test_cli_json_parquet_and_html(run: dict[str, Any], tmp_path: Path) -> None:
    folder = run["folder"]
    args = ["steer", "compare", "-m", "toy", "--trained", str(run["out"]), "--positive", str(folder / "pos.txt")]
    args += ["--negative", str(folder / "neg.txt"), "--data", str(run["data"]), "--layers", "1,2"]
    out, html = tmp_path / "c.parquet", tmp_path / "c.html"
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--html", str(html), "--json"])
    assert result.exit_code == 0, result.output
    parsed = VectorComparison.model_validate_json(result.stdout)
    assert [row.layer for row in parsed.layers] == [1, 2] and parsed.trained_layer == LAYER
    assert pq.read_table(out).num_rows == 2 and html.read_text().startswith("<!DOCTYPE html>")
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and "rescaled" in plain.output, plain.output


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing run", "no run folder"),
        ("empty positive", "has no prompts"),
        ("other width", "d_model 128, this model has 64"),
        ("missing data", "no data file"),
    ],
)
def test_cli_errors_are_one_line(run: dict[str, Any], tmp_path: Path, case: str, words: str) -> None:
    folder = run["folder"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    trained, positive, model, data = str(run["out"]), str(folder / "pos.txt"), "toy", str(run["data"])
    if case == "missing run":
        trained = str(tmp_path / "nowhere")
    elif case == "empty positive":
        positive = str(empty)
    elif case == "other width":
        model = str(build_tiny_model("llama", tmp_path / "tiny"))
    else:
        data = str(tmp_path / "nope.jsonl")
    args = ["steer", "compare", "-m", model, "--trained", trained, "--positive", positive]
    result = CliRunner().invoke(app, [*args, "--negative", str(folder / "neg.txt"), "--data", data])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error:") and words in lines[0], result.stderr
    assert "Traceback" not in result.output
