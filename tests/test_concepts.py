"""Concept lists, offline WordNet, the stage-0 bootstrap and refinement of an encyclopedia (HDF5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mechscope as ms
from mechscope.concepts import refine
from mechscope.concepts.bootstrap import bootstrap, bootstrap_shard, make_plan, parts_folder
from mechscope.concepts.concept import Concept, ConceptList, from_terms, read_concepts, write_concepts
from mechscope.concepts.encyclopedia import HELD_OUT, TRAIN, Encyclopedia, combine
from mechscope.concepts.sources import load_concepts, toyworld_concepts
from mechscope.concepts.templates import GENERAL
from mechscope.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy() -> ms.LanguageModel:
    return ms.load("toy")


@pytest.fixture(scope="module")
def world() -> ConceptList:
    return toyworld_concepts()


# ----------------------------------------------------------------- concept lists


def test_a_list_with_duplicates_and_empty_terms_names_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "concepts.jsonl"
    rows = [Concept(id="a", term="a"), Concept(id="b", term="b"), Concept(id="a", term="again"), Concept("c", " ")]
    path.write_text("".join(c.to_json() + "\n" for c in rows), encoding="utf-8")
    with pytest.raises(InputError, match=r"line 3: duplicate id 'a' \(first on line 1\); line 4: empty term"):
        read_concepts(path)
    text = tmp_path / "terms.txt"
    text.write_text("dog\n\ncat\ndog\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2: empty term; line 4: duplicate id 'dog'"):
        read_concepts(text)
    (tmp_path / "bad.jsonl").write_text('{"term": "x"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2"):
        read_concepts(tmp_path / "bad.jsonl")


def test_a_concept_list_round_trips_through_jsonl(tmp_path: Path, world: ConceptList) -> None:
    write_concepts(tmp_path / "world.jsonl", world)
    again = read_concepts(tmp_path / "world.jsonl")
    assert again.concepts == world.concepts
    assert len(world) == 161 and world.index("toy:animal:dog") > 0
    siblings = world.siblings()[world.index("toy:country:France")]
    assert {world[i].category for i in siblings} == {"toy:country"} and len(siblings) == 53


# ----------------------------------------------------------------- WordNet


def test_wordnet_reads_offline_from_debian_files() -> None:
    from mechscope.concepts.wordnet import lexnames_from_manual, reader

    lexnames = lexnames_from_manual().splitlines()
    assert len(lexnames) == 45 and lexnames[5] == "05\tnoun.animal\t1" and lexnames[44] == "44\tadj.ppl\t3"
    wn = reader()
    dog = wn.synset("dog.n.01")
    assert dog.lexname() == "noun.animal" and "Canis_familiaris" in dog.lemma_names()
    concepts = load_concepts("wordnet", limit=200)
    assert len(concepts) == 200 and concepts[0].id == "entity.n.01"
    unique = load_concepts("wordnet", limit=3000, unique_terms=True)
    assert len({c.term.lower() for c in unique}) == 3000


def test_wordnet_concepts_carry_category_hypernyms_and_kind() -> None:
    from mechscope.concepts.wordnet import reader, synset_concept

    wn = reader()
    dog = synset_concept(wn.synset("dog.n.01"))
    assert dog.term == "dog" and dog.category == "noun.animal" and dog.kind == "concrete"
    # of dog's two hypernyms the first by name, in every process (nltk's own path order follows the hash seed)
    assert dog.hypernyms[0] == "entity.n.01" and dog.parent == "canine.n.02"
    democracy = synset_concept(wn.synset("democracy.n.01"))
    assert democracy.kind == "abstract" and democracy.gloss
    assert len(list(wn.all_synsets("n"))) == 82115  # WordNet 3.0's noun synsets


def test_wordnet_hypernym_paths_do_not_depend_on_the_hash_seed() -> None:
    """Sibling sets (the lenses' negatives) and list digests hang on the parent: it must be the same in
    every process. With nltk's ``hypernym_paths()[0]`` person.n.01's parent changed with PYTHONHASHSEED."""
    code = (
        "from mechscope.concepts.wordnet import reader, synset_concept; wn = reader(); "
        "print([synset_concept(wn.synset(n)).hypernyms for n in ('person.n.01', 'dog.n.01', 'water.n.01')])"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("0", "2")
    }
    assert len(seen) == 1, seen


# ----------------------------------------------------------------- bootstrap


def _hf_mean(toy: ms.LanguageModel, text: str, layer: int) -> torch.Tensor:
    encoded = toy.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = toy.model(**encoded, output_hidden_states=True)
    return out.hidden_states[layer + 1][0].mean(0)  # hidden_states[0] is the embedding output


def test_stage0_means_equal_plain_transformers(toy: ms.LanguageModel, world: ConceptList, tmp_path: Path) -> None:
    enc = bootstrap(toy, world, tmp_path / "enc.h5", layers=[0, -2], batch_size=16, progress=False)
    assert enc.info.layers == (0, 2) and enc.info.model.endswith("toy") and enc.info.stage == 0
    for i in (0, 60, 120, 160):
        for layer in (0, 2):
            expected = _hf_mean(toy, world[i].term, layer).numpy()
            np.testing.assert_allclose(enc.mean(layer)[i], expected.astype(np.float16), rtol=2e-3, atol=2e-3)
    assert (enc.variance(-2) == 0).all() and (enc.count() == 1).all()
    with h5py.File(tmp_path / "enc.h5") as handle:
        assert handle["layer_2/mean"].dtype == np.float16 and handle["layer_2/mean"].compression == "gzip"
        assert handle.attrs["pooling"] == "mean" and handle.attrs["samples_per_concept"] == 1.0
    assert not parts_folder(tmp_path / "enc.h5").exists()


def test_batches_are_length_buckets_and_shards_are_pure(toy: ms.LanguageModel, world: ConceptList) -> None:
    plan = make_plan(toy, world, [-1], batch_size=16)
    lengths = [len(toy.tokenizer(world[i].term)["input_ids"]) for batch in plan.batches for i in batch]
    assert lengths == sorted(lengths)
    first = bootstrap_shard(toy, world, plan, 3)
    again = bootstrap_shard(toy, world, plan, 3)
    assert torch.equal(first[3], again[3]) and first[3].dtype == torch.float16


def _contents(path: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    with h5py.File(path) as handle:
        handle.visititems(
            lambda name, item: found.setdefault(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
        found["attrs"] = {k: str(v) for k, v in handle.attrs.items()}
    return found


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) if k != "attrs" else a[k] == b[k] for k in a)


def test_a_killed_bootstrap_resumes_to_the_same_dataset(world: ConceptList, tmp_path: Path) -> None:
    write_concepts(tmp_path / "world.jsonl", world)
    args = [
        sys.executable,
        "-m",
        "mechscope",
        "concepts",
        "bootstrap",
        "-m",
        "toy",
        "-c",
        str(tmp_path / "world.jsonl"),
    ]
    args += ["--layers", "-2,-1", "--batch-size", "2", "--json"]  # 81 shards: the kill lands mid-run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.h5"
    process = subprocess.Popen([*args, "-o", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    parts = parts_folder(killed)
    while not (parts / "part-000005.safetensors").exists() and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(parts.glob("part-*.safetensors")))
    assert 0 < done < 81 and not killed.exists(), f"the kill did not land mid-run ({done} parts)"
    for target in (killed, tmp_path / "whole.h5"):
        subprocess.run([*args, "-o", str(target)], env=env, check=True, capture_output=True)
    assert _same(_contents(killed), _contents(tmp_path / "whole.h5"))
    assert not parts.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_parts_folder_of_another_job_is_refused(toy: ms.LanguageModel, world: ConceptList, tmp_path: Path) -> None:
    out = tmp_path / "enc.h5"
    with pytest.raises(KeyboardInterrupt):
        bootstrap(toy, world, out, batch_size=32, progress=False, on_shard=_interrupt)
    with pytest.raises(InputError, match="holds the parts of another job"):
        bootstrap(toy, world, out, layers=[0], batch_size=32, progress=False)
    bootstrap(toy, world, out, batch_size=32, progress=False)
    with pytest.raises(InputError, match="already exists"):
        bootstrap(toy, world, out, progress=False)


def _interrupt(shard: int) -> None:
    if shard == 1:
        raise KeyboardInterrupt


def test_a_truncated_or_foreign_file_gives_one_line(toy: ms.LanguageModel, world: ConceptList, tmp_path: Path) -> None:
    out = bootstrap(toy, world, tmp_path / "enc.h5", progress=False).path
    data = out.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.h5").write_text("hello", encoding="utf-8")
    for bad in ("cut.h5", "text.h5"):
        with pytest.raises(InputError, match="truncated or corrupt") as info:
            Encyclopedia(tmp_path / bad)
        assert "\n" not in str(info.value)
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["x"] = 1
    with pytest.raises(InputError, match="not a mechscope encyclopedia"):
        Encyclopedia(tmp_path / "other.h5")
    with pytest.raises(InputError, match="no HDF5 file"):
        Encyclopedia(tmp_path / "missing.h5")


# ----------------------------------------------------------------- refinement


def test_chunks_compressed_once_read_back_as_ordinary_gzip_datasets(tmp_path: Path) -> None:
    from mechscope.storage.hdf5 import GZIP_LEVEL, gzip_datasets

    values = np.random.default_rng(0).normal(size=(1000, 48)).astype(np.float16)  # 1000 = 7 chunks + an edge
    with h5py.File(tmp_path / "ours.h5", "w") as handle:
        gzip_datasets(handle, ["a", "b"], values, (140, 48), resizable=["b"])
    with h5py.File(tmp_path / "h5py.h5", "w") as handle:
        options = {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
        handle.create_dataset("a", data=values, chunks=(140, 48), **options)
    with h5py.File(tmp_path / "ours.h5", "r+") as ours, h5py.File(tmp_path / "h5py.h5", "r") as plain:
        for name in ("a", "b"):
            assert np.array_equal(ours[name][()], values) and ours[name].compression == "gzip" and ours[name].shuffle
        assert ours["a"].maxshape == values.shape and ours["b"].maxshape == (None, 48)
        # the edge chunk (padded with zeros) is the very bytes HDF5's own filter writes
        assert ours["a"].id.read_direct_chunk((980, 0))[1] == plain["a"].id.read_direct_chunk((980, 0))[1]
        ours["b"].resize((1001, 48))  # still growable, like any resizable dataset
    with pytest.raises(ValueError, match="2-D"):
        gzip_datasets(None, ["a"], values[0], (1, 48))


def test_running_statistics_equal_numpy_over_the_samples() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(30, 5)), rng.normal(size=(20, 5))
    owner1, owner2 = rng.integers(0, 4, 30), rng.integers(0, 4, 20)
    count, mean, var = combine(np.zeros(4, np.int64), np.zeros((4, 5)), np.zeros((4, 5)), first, owner1)
    count, mean, var = combine(count, mean, var, second, owner2)
    values, owner = np.concatenate([first, second]), np.concatenate([owner1, owner2])
    for k in range(4):
        rows = values[owner == k]
        assert count[k] == len(rows)
        np.testing.assert_allclose(mean[k], rows.mean(0), atol=1e-12)
        np.testing.assert_allclose(var[k], rows.var(0), atol=1e-12)


def test_stage1_folds_training_templates_and_keeps_held_out_apart(
    toy: ms.LanguageModel, world: ConceptList, tmp_path: Path
) -> None:
    out = tmp_path / "enc.h5"
    enc = bootstrap(toy, world, out, layers=[-1], progress=False)
    contexts = refine.template_contexts(enc, range(len(enc)), 2, held_out=1)
    assert {c.split for c in contexts} == {TRAIN, HELD_OUT}
    enc = refine.refine(toy, out, contexts, 1)
    assert enc.info.stage == 1 and (enc.count() == 3).all() and (enc.stage() == 1).all()
    train, held = enc.samples(split="train"), enc.samples(split="held-out")
    assert len(train) == 3 * len(world) and len(held) == len(world)
    for k in (0, 77, 160):
        rows = train.x[train.concept == k, 0].astype(np.float64)
        np.testing.assert_allclose(enc.mean(-1)[k], rows.mean(0), rtol=2e-3, atol=2e-2)
        np.testing.assert_allclose(enc.variance(-1)[k], rows.var(0), rtol=5e-3, atol=5e-2)
    again = refine.template_contexts(enc, [0], 1, held_out=1)
    first_templates = {int(t) for t in train.template[train.concept == 0] if t >= 0}
    assert len(again) == 1 and again[0].template not in first_templates  # never the same template twice


def test_variances_of_large_states_do_not_overflow(toy: ms.LanguageModel, world: ConceptList, tmp_path: Path) -> None:
    out = tmp_path / "enc.h5"  # toy's last-layer states at a term reach the hundreds: squares overflow float16
    enc = bootstrap(toy, world, out, layers=[-1], pooling="term_last", progress=False)
    enc = refine.refine(toy, out, refine.template_contexts(enc, range(len(enc)), 3, held_out=0), 1)
    train = enc.samples(split="train")
    expected = np.stack([train.x[train.concept == k, 0].astype(np.float64).var(0) for k in range(len(enc))])
    assert expected.max() > 65504  # float16's largest value: the case this guards
    variance = enc.variance(-1)
    assert np.isfinite(variance).all()
    np.testing.assert_allclose(variance, expected, rtol=5e-3, atol=5e-2)  # samples are stored in float16


def test_a_failed_refinement_leaves_the_file_as_it_was(
    toy: ms.LanguageModel, world: ConceptList, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "enc.h5"
    enc = bootstrap(toy, world, out, progress=False)
    before = out.read_bytes()
    contexts = refine.template_contexts(enc, range(10), 2, held_out=0)

    def broken(handle: object, rows: np.ndarray) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("mechscope.concepts.encyclopedia._append", broken)
    with pytest.raises(OSError, match="disk full"):
        refine.refine(toy, out, contexts, 1)
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_stage3_keeps_the_contexts_a_reader_finds_hardest(
    toy: ms.LanguageModel, world: ConceptList, tmp_path: Path
) -> None:
    enc = bootstrap(toy, world, tmp_path / "enc.h5", progress=False)
    calls: list[int] = []

    def score(x: np.ndarray, concept: np.ndarray) -> np.ndarray:
        calls.append(len(concept))
        return x[:, 0, 0]  # "probability" = the first feature: the chosen ones must be the lowest

    chosen = refine.adversarial_contexts(toy, enc, [0, 1], 1, score)
    assert len(chosen) == 2 and calls == [6]  # each of the two countries has 3 toy templates to choose from
    from mechscope.concepts.pooling import pooled

    for pick in chosen:
        concept = enc.concepts[pick.concept]
        texts = [t.format(t=concept.term) for t in refine.bank_of(concept, "auto").train]
        first = pooled(toy, texts, [-1])[3][:, 0]
        assert texts[int(first.argmin())] == pick.text


def test_stage2_contexts_are_written_by_the_generator(toy: ms.LanguageModel, tmp_path: Path) -> None:
    concepts = from_terms(["France", "iron", "dog"])
    enc = bootstrap(toy, concepts, tmp_path / "enc.h5", progress=False)
    contexts = refine.generated_contexts(toy, enc, [0, 2], 2, max_new_tokens=8)
    assert len(contexts) == 4 and all(c.template == -2 for c in contexts)
    assert all(enc.concepts[c.concept].term.lower() in c.text.lower() for c in contexts)
    enc = refine.refine(toy, tmp_path / "enc.h5", contexts, 2)
    assert enc.count().tolist() == [3, 1, 3] and enc.info.stage == 2


def test_templates_are_split_for_good() -> None:
    assert not set(GENERAL.train) & set(GENERAL.held_out)
    with pytest.raises(InputError, match="has 24"):
        from mechscope.concepts.templates import contexts_for

        contexts_for("x", "x", GENERAL, 25)
