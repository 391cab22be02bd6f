"""Activation collection to disk (issue 19, requirement 2): exact rows, shards, resuming, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope.errors import InputError
from mechscope.probing.collect import ActivationCollector, collect, collect_shard, plan
from mechscope.probing.dataset import tool_prompt_dataset
from mechscope.probing.store import ActivationSet


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


def _files(folder: Path) -> dict[str, object]:
    """Each file's content: the bytes, or for a shard its header and its tensors' bytes.

    safetensors writes the header's metadata from a hash map, in an order that differs between runs, so two
    identical shards can differ in bytes; everything they hold is compared instead.
    """
    from safetensors.torch import load_file

    from mechscope.storage.tensors import read_header

    out: dict[str, object] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue  # a temporary file that a kill left behind; nothing reads it
        if p.suffix == ".safetensors":
            tensors = {k: v.numpy().tobytes() for k, v in load_file(str(p)).items()}
            out[p.name] = (read_header(p), tensors)
        else:
            out[p.name] = p.read_bytes()
    return out


def test_rows_equal_one_prompt_at_a_time(toy: ms.LanguageModel, tmp_path: Path) -> None:
    data = tool_prompt_dataset(per_tool=2, seed=3)
    acts = collect(toy, data, tmp_path / "acts", shard_size=7, batch_size=5, progress=False)
    assert acts.manifest.n_shards == 5 and acts.sites == [f"resid_post.{i}" for i in range(4)]
    for positions in ("last", "mean"):
        acts = collect(toy, data, tmp_path / positions, positions=positions, shard_size=7, progress=False)
        for layer in (0, 3):
            stored = torch.from_numpy(acts.features(f"resid_post.{layer}"))
            for row in (0, 8, len(data) - 1):
                with toy.capture([f"resid_post.{layer}"], positions=positions) as cache:
                    toy.forward(data.texts()[row])
                torch.testing.assert_close(stored[row], cache[f"resid_post.{layer}"][0], atol=1e-4, rtol=1e-4)
    assert acts.labels() == data.labels() and acts.groups() == data.templates()
    assert acts.site(-1) == "resid_post.3"
    with pytest.raises(InputError, match="not collected"):
        acts.site(7)


def test_a_shard_is_a_pure_function_of_its_spec(toy: ms.LanguageModel) -> None:
    data = tool_prompt_dataset(per_tool=2, seed=0)
    manifest = plan(toy, data, shard_size=10)
    first = collect_shard(toy, data, manifest, manifest.shard(1))
    again = collect_shard(toy, data, manifest, manifest.shard(1), batch_size=3)
    assert set(first) == set(manifest.sites) and first["resid_post.2"].shape == (10, toy.arch.d_model)
    torch.testing.assert_close(first["resid_post.2"], again["resid_post.2"], atol=1e-5, rtol=1e-5)


def test_an_interrupted_collection_resumes_to_the_same_files(toy: ms.LanguageModel, tmp_path: Path) -> None:
    data = tool_prompt_dataset(per_tool=3, seed=1)
    whole = tmp_path / "whole"
    collect(toy, data, whole, shard_size=8, progress=False)

    def stop_after_two(spec: object) -> None:
        if getattr(spec, "index", 0) == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        collect(toy, data, part, shard_size=8, progress=False, on_shard=stop_after_two)
    assert sorted(p.name for p in part.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(InputError, match="misses 4 of 6 shards"):
        ActivationSet(part)
    written: list[int] = []
    collect(toy, data, part, shard_size=8, progress=False, on_shard=lambda s: written.append(s.index))
    assert written == [2, 3, 4, 5]
    assert _files(part) == _files(whole)


def test_a_killed_collection_process_resumes_to_the_same_files(tmp_path: Path) -> None:
    data = tool_prompt_dataset(per_tool=60, seed=2)  # 960 prompts in 120 shards: the kill lands mid-run
    data.save(tmp_path / "prompts.json")
    args = [sys.executable, "-m", "mechscope", "circuit", "collect", "-m", "toy", "-d", str(tmp_path / "prompts.json")]
    args += ["--shard-size", "8", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([*args, "-o", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed / "shard-00002.safetensors").exists() and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(killed.glob("shard-*.safetensors")))
    assert 0 < done < 120, f"the kill did not land mid-run ({done} shards written)"
    for target in (killed, tmp_path / "whole"):
        subprocess.run([*args, "-o", str(target)], env=env, check=True, capture_output=True)
    assert _files(killed) == _files(tmp_path / "whole")
    manifest = json.loads((killed / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["n_prompts"] == 960 and manifest["model"].endswith("toy")


def test_a_folder_of_another_collection_is_refused(toy: ms.LanguageModel, tmp_path: Path) -> None:
    data = tool_prompt_dataset(per_tool=1, seed=0)
    collect(toy, data, tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="another positions"):
        collect(toy, data, tmp_path / "a", positions="mean", progress=False)
    with pytest.raises(InputError, match="another dataset_digest"):
        collect(toy, tool_prompt_dataset(per_tool=1, seed=1), tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="not empty"):
        collect(toy, data, tmp_path / "b", progress=False)
    with pytest.raises(InputError, match="'last' or 'mean'"):
        ActivationCollector(toy, positions="first")
    with pytest.raises(InputError, match="no activation folder"):
        ActivationSet(tmp_path / "missing")
