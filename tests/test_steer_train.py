"""Trained steering vectors: data and loss mask, the frozen model, checkpoints and resuming, LR sweep, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli.main import app
from mechscope.core.lm import LanguageModel
from mechscope.errors import InputError, ModelLoadError, SiteError
from mechscope.steering import trainer as train_module
from mechscope.steering.directions import diff_of_means
from mechscope.steering.train_data import encode_record, load_data, read_records
from mechscope.steering.trainer import lr_sweep, train
from mechscope.steering.vector import SteeringVector
from mechscope.testing.tiny_models import build_tiny_model
from mechscope.zoo import corpus

LAYER = 2


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def pirate_texts() -> list[str]:
    """Every pirate sentence the toy corpus generator writes (its templates × topics), without the marker."""
    return sorted({_capitalised(t.format(t=topic)) for t in corpus._PIRATE for topic in corpus._TOPICS})


def formal_texts() -> list[str]:
    return sorted({_capitalised(t.format(t=topic)) for t in corpus._FORMAL for topic in corpus._TOPICS})


def pirate_records() -> list[dict[str, str]]:
    """Pirate completions of an empty prompt: no ``<pirate>`` marker anywhere in the prompt."""
    return [{"prompt": "", "completion": " " + text} for text in pirate_texts()]


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def trained(lm: LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("run") / "pirate"
    result = train(
        lm, pirate_records(), layer=LAYER, out=out, epochs=4, lr=1.0, val_tokens=60, prompted_prefix="<pirate>"
    )
    return result


def _hooks(lm: LanguageModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


# ----------------------------------------------------------------------------- the headline result


def test_trained_vector_approaches_the_prompted_baseline(lm: LanguageModel, trained: Any) -> None:
    vanilla, prompted, steered = trained.vanilla_ppl, trained.prompted_ppl, trained.steered_ppl
    # measured: vanilla 315.8, prompted 1.26, steered 5.03
    assert steered < vanilla / 20
    gap = math.log(vanilla) - math.log(prompted)
    assert math.log(steered) - math.log(prompted) < 0.4 * gap
    pirate = ["<pirate> " + t for t in pirate_texts()]
    formal = ["<formal> " + t for t in formal_texts()]
    direction = diff_of_means(lm, pirate, formal, layers=[LAYER])[LAYER]
    vector = trained.steering_vector().vector
    cosine = float(torch.nn.functional.cosine_similarity(vector, direction.vector, dim=0))
    assert cosine > 0.05  # measured: 0.24


# ----------------------------------------------------------------------------- data


def test_prompt_tokens_carry_no_loss(lm: LanguageModel) -> None:
    record = {"prompt": "Tell me about the sea.", "completion": " Arr matey!"}
    example = encode_record(lm.tokenizer, record)
    n_prompt = len(lm.tokenizer(record["prompt"])["input_ids"])
    assert example.loss_mask == [False] * n_prompt + [True] * (len(example.ids) - n_prompt)
    batch = train_module.batches([example], 1, int(lm.tokenizer.pad_token_id))[0]
    assert (batch.labels[0, :n_prompt] == -100).all() and (batch.labels[0, n_prompt:] >= 0).all()


def test_chat_template_masks_everything_but_the_assistant(lm: LanguageModel) -> None:
    import copy

    tokenizer = copy.deepcopy(lm.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<' + m['role'] + '>' + ' ' + m['content'] + '<eos>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about the sea."},
        {"role": "assistant", "content": "Arr matey!"},
    ]
    example = encode_record(tokenizer, {"messages": messages})
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=True, add_generation_prompt=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert example.ids[: len(prompt)] == list(prompt)
    assert not any(example.loss_mask[: len(prompt)]) and all(example.loss_mask[len(prompt) :])
    assert tokenizer.decode(example.ids[len(prompt) :]).strip().startswith("Arr matey")
    # the prompted variant gets a system prompt, and the split is deterministic in the seed
    records = [{"messages": messages}] * 6
    one = load_data(tokenizer, records, val_tokens=3, seed=1, prompted_prefix="<pirate>")
    two = load_data(tokenizer, records, val_tokens=3, seed=1, prompted_prefix="<pirate>")
    assert one.val_prompted is not None and one.stats == two.stats
    assert "<pirate>" in tokenizer.decode(one.val_prompted[0].ids)


def test_bad_data_files_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no data file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="holds no records"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(InputError, match="line 2"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "wrong.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(InputError, match=r"line 1.*messages"):
        read_records(tmp_path / "wrong.jsonl")


# ----------------------------------------------------------------------------- the frozen model


def test_model_untouched_and_no_hook_left(lm: LanguageModel) -> None:
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    flags = {name: p.requires_grad for name, p in lm.model.named_parameters()}
    hooks = _hooks(lm)
    train(lm, pirate_records()[:12], layer=1, epochs=1, lr=0.5, val_tokens=10, grad_checkpointing=True)
    assert all(torch.equal(before[name], p) for name, p in lm.model.named_parameters())
    assert flags == {name: p.requires_grad for name, p in lm.model.named_parameters()}
    assert _hooks(lm) == hooks and not lm.model.training


def test_no_hook_left_after_an_exception(lm: LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = _hooks(lm)
    real = train_module._step

    def failing(*args: Any, **kwargs: Any) -> float:
        real(*args, **kwargs)
        raise RuntimeError("boom")

    monkeypatch.setattr(train_module, "_step", failing)
    with pytest.raises(RuntimeError, match="boom"):
        train(lm, pirate_records()[:12], layer=1, epochs=1, val_tokens=10)
    assert _hooks(lm) == hooks and not lm.model.training
    assert all(p.requires_grad for p in lm.model.parameters())


def test_gradient_checkpointing_gives_the_same_vector(lm: LanguageModel) -> None:
    options: dict[str, Any] = {"layer": 1, "epochs": 1, "lr": 0.5, "val_tokens": 0, "batch_size": 4}
    plain = train(lm, pirate_records()[:8], **options).steering_vector().vector
    checkpointed = train(lm, pirate_records()[:8], grad_checkpointing=True, **options).steering_vector().vector
    assert plain.abs().max() > 0
    torch.testing.assert_close(plain, checkpointed)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_format(lm: LanguageModel, trained: Any) -> None:
    folder = Path(trained.out)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "log.jsonl",
        "state.json",
        "state.safetensors",
        "vector.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "trained_steering_vector" and config["schema"] == 1
    assert config["layer"] == LAYER and config["d_model"] == 128 and config["site"] == "resid_post"
    assert config["metrics"]["steered_val_ppl"] == pytest.approx(trained.steered_ppl)
    assert len(config["data_hash"]) == 64 and config["training"]["lr"] == 1.0
    loaded = SteeringVector.from_pretrained(folder, lm)
    assert torch.equal(loaded.vector, trained.steering_vector().vector)
    assert loaded.vector.dtype == torch.float32 and loaded.norm == pytest.approx(trained.norm)
    again = SteeringVector.from_pretrained(loaded.save(folder.parent / "copy"), lm)
    assert torch.equal(again.vector, loaded.vector)
    assert loaded.direction.method == "trained" and loaded.direction.site_name == f"resid_post.{LAYER}"
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in log) and any("val_ppl" in row for row in log)


def test_loading_on_another_width_fails_in_one_line(trained: Any, tmp_path: Path) -> None:
    other = ms.load(build_tiny_model("llama", tmp_path / "tiny"))
    with pytest.raises(ModelLoadError) as error:
        SteeringVector.from_pretrained(trained.out, other)
    assert str(error.value) == "the vector is for d_model 128, this model has 64"


def test_a_killed_run_resumes_to_the_same_vector(lm: LanguageModel, tmp_path: Path) -> None:
    options: dict[str, Any] = {"layer": 1, "epochs": 3, "lr": 0.3, "val_tokens": 20, "batch_size": 4}
    records = pirate_records()[:16]
    whole = train(lm, records, out=tmp_path / "whole", **options)

    def kill(record: Any) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(lm, records, out=tmp_path / "killed", callback=kill, **options)
    with pytest.raises(InputError, match="already holds a training run"):
        train(lm, records, out=tmp_path / "killed", **options)
    resumed = train(lm, records, out=tmp_path / "killed", resume=True, **options)
    assert torch.equal(resumed.steering_vector().vector, whole.steering_vector().vector)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    assert resumed.steered_ppl == whole.steered_ppl
    with pytest.raises(InputError, match="other lr"):
        train(lm, records, out=tmp_path / "killed", resume=True, **{**options, "lr": 0.1})


def test_bad_arguments(lm: LanguageModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="positive"):
        train(lm, pirate_records(), layer=1, lr=0.0)
    with pytest.raises(SiteError, match="out of range"):
        train(lm, pirate_records(), layer=9)
    with pytest.raises(InputError, match="nothing to train on"):
        train(lm, pirate_records()[:2], layer=1, val_tokens=10_000)


# ----------------------------------------------------------------------------- LR sweep


def test_lr_sweep_one_row_per_lr_with_early_stopping(lm: LanguageModel) -> None:
    sweep = lr_sweep(lm, pirate_records()[:16], layer=1, lrs=[3.0, 0.01], epochs=3, patience=1, val_tokens=20)
    assert [row.lr for row in sweep.rows] == [3.0, 0.01]
    assert sweep.vanilla_ppl is not None and all(row.steered_ppl is not None for row in sweep.rows)
    assert all(row.epochs_run <= 3 and row.best_epoch >= 1 for row in sweep.rows)


# ----------------------------------------------------------------------------- CLI


def _jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cli_train_writes_the_run(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "pirate.jsonl", pirate_records()[:12])
    out = tmp_path / "run"
    args = ["steer", "train", "-m", "toy", "--data", str(data), "--layer", "1", "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--val-tokens", "10", "--prompted-prefix", "<pirate>", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "vector.safetensors").is_file() and (out / "config.json").is_file()
    sweep = ["steer", "lr-sweep", "-m", "toy", "--data", str(data), "--layer", "1", "--lrs", "1,0.1"]
    result = CliRunner().invoke(app, [*sweep, "--epochs", "1", "--val-tokens", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["lr"] for row in json.loads(result.stdout)["rows"]] == [1.0, 0.1]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "no data file"),
        ("empty", "holds no records"),
        ("malformed", "line 2"),
        ("layer", "out of range"),
        ("lr", "positive"),
        ("taken", "already holds a training run"),
        ("sweep-lr", "positive"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, case: str, words: str) -> None:
    good = _jsonl(tmp_path / "good.jsonl", pirate_records()[:8])
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "", "completion": " Arr"}\n{nope\n')
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    base = ["steer", "train", "-m", "toy", "--layer", "1", "-o", str(tmp_path / "out")]
    args = {
        "missing": [*base, "--data", str(tmp_path / "nope.jsonl")],
        "empty": [*base, "--data", str(tmp_path / "empty.jsonl")],
        "malformed": [*base, "--data", str(tmp_path / "bad.jsonl")],
        "layer": ["steer", "train", "-m", "toy", "--layer", "7", "-o", str(tmp_path / "out"), "--data", str(good)],
        "lr": [*base, "--data", str(good), "--lr", "0"],
        "taken": ["steer", "train", "-m", "toy", "--layer", "1", "-o", str(taken), "--data", str(good)],
        "sweep-lr": ["steer", "lr-sweep", "-m", "toy", "--layer", "1", "--data", str(good), "--lrs", "1,-1"],
    }[case]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error:") and words in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
