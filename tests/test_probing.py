"""Labelled prompt datasets and honest probes (issue 19, requirements 1 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mechscope as ms
from mechscope.errors import InputError
from mechscope.probing.dataset import (
    LabelledPrompt,
    PromptDataset,
    ToolPromptDataset,
    load_prompts,
    split_by_template,
    tool_prompt_dataset,
)
from mechscope.probing.probe import majority_baseline, permutation_p_value, probe, template_folds
from mechscope.probing.results import ProbeMethod

pytest.importorskip("sklearn")


def test_the_builtin_set_has_eight_tools_and_is_seeded() -> None:
    data = tool_prompt_dataset(per_tool=4, seed=1)
    assert ToolPromptDataset is PromptDataset
    assert len(data.tools()) >= 8 and data.labels().count(1) == 4 * len(data.tools())
    assert data.labels().count(0) == data.labels().count(1)
    assert len({t for t in data.templates() if t.startswith("chat/")}) >= 3
    assert tool_prompt_dataset(per_tool=4, seed=1) == data != tool_prompt_dataset(per_tool=4, seed=2)
    assert all(p.metadata["answer"].startswith(f"{p.sub_label}(") for p in data.prompts if p.label == 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_template_is_disjoint_and_covers_both_classes(seed: int) -> None:
    data = tool_prompt_dataset(per_tool=6, seed=0)
    train, test = split_by_template(data, test_share=0.3, seed=seed)
    assert not set(train.templates()) & set(test.templates())
    assert len(train) + len(test) == len(data)
    assert sorted(train.texts() + test.texts()) == sorted(data.texts())
    assert set(test.labels()) == set(train.labels()) == {0, 1}


def test_a_split_needs_two_templates() -> None:
    one = PromptDataset(
        prompts=[LabelledPrompt(prompt="a", label=0, template="t"), LabelledPrompt(prompt="b", label=1, template="t")]
    )
    with pytest.raises(InputError, match="at least two templates"):
        split_by_template(one)


def test_json_jsonl_and_csv_round_trip(tmp_path: Path) -> None:
    data = tool_prompt_dataset(per_tool=2, seed=0)
    assert load_prompts(data.save(tmp_path / "set.json")) == data
    assert PromptDataset.load(tmp_path / "set.json").digest() == data.digest()
    rows = [
        {"prompt": p.prompt, "label": p.label, "sub_label": p.sub_label, "template": p.template} for p in data.prompts
    ]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    lines = ["prompt,label,sub_label,template"] + [
        f'"{r["prompt"]}",{r["label"]},{r["sub_label"]},{r["template"]}' for r in rows
    ]
    (tmp_path / "set.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("set.jsonl", "set.csv"):
        loaded = load_prompts(tmp_path / name)
        assert (loaded.texts(), loaded.labels(), loaded.sub_labels(), loaded.templates()) == (
            data.texts(),
            data.labels(),
            data.sub_labels(),
            data.templates(),
        )


def test_a_file_without_templates_gives_each_prompt_its_own(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("prompt,label,source\nhello,0,web\nweather?,1,web\n", encoding="utf-8")
    loaded = load_prompts(tmp_path / "p.csv")
    assert loaded.templates() == ["row-0", "row-1"] and loaded.prompts[0].metadata == {"source": "web"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "prompt,sub_label\nhi,x\n", r"a.csv:1: missing column 'label'"),
        ("b.csv", "prompt,label\nhi,0\nyo,maybe\n", r"b.csv:3: label 'maybe' is not an integer"),
        ("c.jsonl", '{"prompt": "hi", "label": 0}\n{"prompt": "yo"}\n', r"c.jsonl:2: missing 'label'"),
        ("d.jsonl", '{"prompt": "hi", "label": 0}\n{"prompt": "yo", "label": 1.5}\n', r"d.jsonl:2: label 1.5"),
        ("e.jsonl", '{"prompt": "hi", "label": 0}\n{oops\n', r"e.jsonl:2: not valid JSON"),
        ("f.json", '{"prompts": [{"prompt": "hi", "label": true}]}', r"f.json: example 0: label True"),
        ("g.txt", "hi", r"unknown prompt file type '.txt'"),
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        load_prompts(tmp_path / name)
    assert "\n" not in str(info.value)


def test_no_leakage_random_features_and_labels_score_at_chance() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 200))
    labels = rng.integers(0, 2, size=300)
    groups = np.arange(300) // 10
    score = probe(features, labels, groups, permutations=10)
    assert abs(score.accuracy - 0.5) < 0.1, score
    assert abs(score.selectivity) < 0.1 and score.p_value > 0.05


@pytest.mark.parametrize("method", ["logistic", "diff_means"])
def test_two_blobs_are_read_perfectly(method: ProbeMethod) -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 60)
    features = rng.normal(size=(120, 8)) + 4.0 * labels[:, None] * np.eye(8)[0]
    groups = [f"t{i // 6}" for i in range(120)]
    score = probe(features, labels, groups, permutations=30, method=method)
    assert score.accuracy >= 0.98 and score.selectivity > 0.35
    assert score.p_value == pytest.approx(1 / 31)
    assert score.n_groups == 20 and score.folds == 5 and score.method == method


def test_folds_never_share_a_group() -> None:
    y = np.repeat([0, 1], 30)
    groups = np.arange(60) // 4
    splits = template_folds(y, groups, folds=5, seed=3)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(60))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])


def test_majority_baseline_and_p_value_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 0])
    splits = [(np.array([0, 1, 3]), np.array([2, 4, 5])), (np.array([3, 4, 5]), np.array([0, 1]))]
    # tested: 2,4,5,0,1 -> labels 0,1,0,0,0: class 0 is most common -> 4/5; per fold 2/3 and 2/2.
    pooled, per_fold = majority_baseline(y, splits)
    assert per_fold == pytest.approx([2 / 3, 1.0]) and pooled == pytest.approx(4 / 5)
    assert permutation_p_value(0.8, [0.5, 0.8, 0.9, 0.6]) == pytest.approx(3 / 5)
    assert permutation_p_value(0.8, []) == 1.0


def test_bad_probe_inputs_are_input_errors() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(InputError, match="two distinct labels"):
        probe(x, [1, 1, 1, 1], [0, 1, 2, 3])
    with pytest.raises(InputError, match="one each"):
        probe(x, [0, 1, 0], [0, 1, 2, 3])
    with pytest.raises(InputError, match="two classes"):
        probe(x, [0, 1, 2, 0], [0, 1, 2, 3], method="diff_means")


def test_tool_mode_is_readable_on_held_out_templates_of_toy() -> None:
    lm = ms.load("toy")
    data = tool_prompt_dataset(per_tool=10, seed=0)
    with lm.capture(["resid_post.2"], positions="last") as cache:
        lm.forward(data.texts())
    features = cache["resid_post.2"].float().numpy()
    score = probe(features, data.labels(), data.templates(), permutations=20)
    # measured: accuracy 0.669, majority 0.469, control 0.538, p = 1/21
    assert score.accuracy >= score.majority + 0.1 and score.selectivity > 0.05, score
    assert score.p_value < 0.1
