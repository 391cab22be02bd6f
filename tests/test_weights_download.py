"""Verified downloads: git blob ids, manifest verification, hub-metadata checks and the offline fallback.

The hub itself cannot be reached from the test machines; the hub path's comparison step is tested with
huggingface_hub's own metadata types filled with hashes computed independently here (hashlib, git).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling
from typer.testing import CliRunner

from mechscope.cli.main import app
from mechscope.errors import ModelLoadError, WeightFileError
from mechscope.storage.atomic import atomic_write_text
from mechscope.weights.download import (
    MANIFEST_NAME,
    ChecksumMismatchError,
    FileRecord,
    Manifest,
    _check_against_hub,
    _selected,
    download,
    git_blob_sha1,
    read_manifest,
    verify,
)

MODEL_ID = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def _git_hash(path: Path) -> str:
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_a_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def downloaded(tiny_dir: Callable[[str], Path], tmp_path: Path) -> Path:
    """``tmp_path/models/tiny-org/tiny-llama``: a saved model with the manifest a download would write."""
    folder = tmp_path / "models" / MODEL_ID
    shutil.copytree(tiny_dir("llama"), folder)
    records = [
        FileRecord(
            path=path.name,
            size=path.stat().st_size,
            sha256=_sha256(path),
            blob_id=None if path.suffix == ".safetensors" else _git_hash(path),
            lfs=path.suffix == ".safetensors",
        )
        for path in sorted(folder.iterdir())
    ]
    manifest = Manifest(
        model_id=MODEL_ID,
        requested_revision="main",
        commit=COMMIT,
        created_at="2025-01-01T00:00:00+00:00",
        files=records,
    )
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    return folder


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    for name, content in (("config.json", b'{"a": 1}\n'), ("empty", b""), ("binary", bytes(range(256)) * 3)):
        path = tmp_path / name
        path.write_bytes(content)
        assert git_blob_sha1(path) == _git_hash(path)


def test_verify_passes_on_an_intact_folder(downloaded: Path) -> None:
    (downloaded / "notes.txt").write_text("mine")
    (downloaded / ".cache" / "huggingface").mkdir(parents=True)
    (downloaded / ".cache" / "huggingface" / "x.metadata").write_text("hub bookkeeping")
    report = verify(downloaded)
    files = read_manifest(downloaded).files
    assert report.files_checked == len(files) >= 3 and report.commit == COMMIT and report.model_id == MODEL_ID
    assert report.bytes_checked == sum(f.size for f in files) and report.unlisted_files == ["notes.txt"]


def test_verify_names_a_corrupted_file(downloaded: Path) -> None:
    _flip_a_byte(downloaded / "model.safetensors")
    with pytest.raises(ChecksumMismatchError) as caught:
        verify(downloaded)
    message = str(caught.value)
    assert "\n" not in message and "model.safetensors sha256" in message and message.startswith("1 of ")
    assert f"--model-id {MODEL_ID} --revision {COMMIT} --out {downloaded.parent.parent}" in message


def test_verify_names_missing_and_truncated_files(downloaded: Path) -> None:
    (downloaded / "config.json").unlink()
    weights = downloaded / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ChecksumMismatchError) as caught:
        verify(downloaded)
    message = str(caught.value)
    assert message.startswith("2 of ") and "config.json is missing" in message
    assert "model.safetensors has 1000 bytes" in message


def test_missing_or_broken_manifest_is_a_clear_error(downloaded: Path) -> None:
    manifest = downloaded / MANIFEST_NAME
    manifest.write_text("{not json")
    with pytest.raises(WeightFileError, match="is not a valid manifest"):
        verify(downloaded)
    escaping = FileRecord(path="../outside.bin", size=1, sha256="0" * 64, lfs=True)
    bad = Manifest(model_id=MODEL_ID, requested_revision="main", commit=COMMIT, created_at="now", files=[escaping])
    manifest.write_text(bad.model_dump_json())
    with pytest.raises(WeightFileError, match="outside the folder"):
        verify(downloaded)
    manifest.unlink()
    with pytest.raises(WeightFileError, match=f"has no {MANIFEST_NAME}"):
        verify(downloaded)


def test_offline_download_verifies_against_the_manifest(downloaded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = downloaded.parent.parent
    assert download(MODEL_ID, revision="main", out=root) == downloaded
    assert download(MODEL_ID, revision=COMMIT[:10], out=root) == downloaded
    with pytest.raises(WeightFileError, match=r"holds revision main \(commit 0123456789ab\), not v2\.0"):
        download(MODEL_ID, revision="v2.0", out=root)
    _flip_a_byte(downloaded / "tokenizer.json", 5)
    with pytest.raises(ChecksumMismatchError, match=r"tokenizer\.json sha256"):
        download(MODEL_ID, out=root)


def test_offline_download_without_a_manifest_fails_clearly(
    tmp_path: Path, tiny_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightFileError) as caught:
        download(MODEL_ID, out=tmp_path)
    assert "\n" not in str(caught.value) and "cannot be reached" in str(caught.value)
    shutil.copytree(tiny_dir("llama"), tmp_path / MODEL_ID)
    with pytest.raises(WeightFileError, match=f"has no {MANIFEST_NAME} to verify against"):
        download(MODEL_ID, out=tmp_path)
    with pytest.raises(ModelLoadError, match="not a hub model id"):
        download("not a//valid id", out=tmp_path)


def test_hub_metadata_check_uses_sha256_for_lfs_and_blob_ids_for_git(downloaded: Path) -> None:
    weights, config = downloaded / "model.safetensors", downloaded / "config.json"
    lfs = RepoSibling(
        rfilename="model.safetensors",
        size=weights.stat().st_size,
        blob_id="f" * 40,  # the id of the LFS pointer, not of the content: must not be compared
        lfs=BlobLfsInfo(size=weights.stat().st_size, sha256=_sha256(weights), pointer_size=134),
    )
    git = RepoSibling(rfilename="config.json", size=config.stat().st_size, blob_id=_git_hash(config))
    assert _check_against_hub(downloaded, lfs) == FileRecord(
        path="model.safetensors", size=weights.stat().st_size, sha256=_sha256(weights), lfs=True
    )
    assert _check_against_hub(downloaded, git).blob_id == _git_hash(config)
    assert [s.rfilename for s in _selected([lfs, git], ["*.json"])] == ["config.json"]
    _flip_a_byte(weights)
    with pytest.raises(ChecksumMismatchError, match=r"model\.safetensors does not match the hub: sha256"):
        _check_against_hub(downloaded, lfs)
    config.write_text(config.read_text() + " ")
    with pytest.raises(ChecksumMismatchError, match=r"config\.json does not match the hub: git blob"):
        _check_against_hub(downloaded, git)
    missing = RepoSibling(rfilename="special_tokens.json", blob_id="0" * 40)
    with pytest.raises(ChecksumMismatchError, match=r"special_tokens\.json is missing"):
        _check_against_hub(downloaded, missing)


def test_manifest_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / MANIFEST_NAME
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]


def test_cli_verify_and_offline_download(downloaded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = runner.invoke(app, ["weights", "verify", str(downloaded), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["commit"] == COMMIT
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetched = runner.invoke(
        app, ["weights", "download", "--model-id", MODEL_ID, "--out", str(downloaded.parent.parent), "--json"]
    )
    assert fetched.exit_code == 0, fetched.output
    assert json.loads(fetched.stdout)["folder"] == str(downloaded)
    _flip_a_byte(downloaded / "model.safetensors")
    corrupt = runner.invoke(app, ["weights", "verify", str(downloaded)])
    assert corrupt.exit_code == 1 and corrupt.stderr.strip().count("\n") == 0 and "model.safetensors" in corrupt.stderr
    no_manifest = runner.invoke(app, ["weights", "verify", str(downloaded.parent)])
    assert no_manifest.exit_code == 2 and no_manifest.stderr.strip().count("\n") == 0
