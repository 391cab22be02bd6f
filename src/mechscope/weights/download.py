"""Download a checkpoint from the Hugging Face Hub, verify every file, and record what was verified.

`download` resolves the requested revision to a commit, snapshots that commit into ``out/org/name`` with
``huggingface_hub.snapshot_download`` (which resumes partial downloads and writes each file atomically),
then checks every file against the hub's metadata: the sha256 of LFS files, and the git blob id (sha1 of
``b"blob {size}\\0" + content``) of small files kept in git itself. What it checked goes into
``mechscope-manifest.json`` in the folder (model id, requested revision, resolved commit, per-file size,
sha256 and blob id), written atomically.

Without the hub (``HF_HUB_OFFLINE=1`` or no network), `download` verifies the folder against that manifest
instead, and `verify` does the same at any time.

Example (the two ``+SKIP`` lines are not run by the doctests: they need the network to reach the Hub):
    >>> from mechscope.weights.download import download, verify
    >>> folder = download("org/name", revision="main", out=Path("data/models"))  # doctest: +SKIP
    >>> verify(folder).files_checked  # doctest: +SKIP
    7
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from mechscope.errors import ModelLoadError, WeightFileError
from mechscope.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST_NAME = "mechscope-manifest.json"
"""The manifest's file name inside a downloaded folder."""

_READ_BLOCK = 1 << 23
_SKIPPED_DIRS = (".cache", ".git")  # huggingface_hub keeps its resume metadata in .cache/huggingface


class ChecksumMismatchError(WeightFileError):
    """A downloaded file's size or hash differs from the hub's metadata or the local manifest."""


class FileRecord(BaseModel):
    """One verified file of a downloaded checkpoint.

    Attributes:
        path: path inside the folder, with forward slashes.
        size: size in bytes.
        sha256: sha256 of the content (hex).
        blob_id: git blob id (sha1 of ``"blob {size}\\0" + content``) for files not stored with LFS.
        lfs: whether the hub stores the file with LFS (its sha256 was checked) or in git (its blob id was).
    """

    path: str
    size: int
    sha256: str
    blob_id: str | None = None
    lfs: bool


class Manifest(BaseModel):
    """What `download` verified: written next to the files as ``mechscope-manifest.json``."""

    schema_version: Literal[1] = 1
    model_id: str
    requested_revision: str
    commit: str
    allow_patterns: list[str] | None = None
    created_at: str
    files: list[FileRecord]


class VerifyReport(BaseModel):
    """The outcome of a successful verification (a failed one raises `ChecksumMismatchError`).

    Attributes:
        folder: the verified folder.
        model_id: the model id from the manifest.
        commit: the commit the files belong to.
        files_checked: files whose size and hash matched.
        bytes_checked: their total size.
        unlisted_files: files in the folder that the manifest does not list (not checked).
    """

    folder: str
    model_id: str
    commit: str
    files_checked: int
    bytes_checked: int
    unlisted_files: list[str]


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file, as ``git hash-object`` prints it.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "hello.txt"
        >>> _ = path.write_bytes(b"hello")
        >>> git_blob_sha1(path)  # what `printf hello | git hash-object --stdin` prints
        'b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0'
    """
    return _digests(path)[2]


def download(
    model_id: str,
    *,
    revision: str | None = "main",
    out: Path,
    allow_patterns: list[str] | str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Download ``model_id`` at ``revision`` into ``out/org/name``, verify every file, write the manifest.

    Args:
        model_id: a hub model id, ``org/name`` (or ``name``).
        revision: a branch, tag or commit (None: ``main``); the commit it resolves to is recorded.
        out: the root folder; the files land in ``out / model_id``.
        allow_patterns: glob pattern(s) of the files to fetch (default: all).
        token: a hub token for gated or private models (default: the locally saved one).

    Returns:
        The model's folder.

    Raises:
        ModelLoadError: the model or revision does not exist, is gated, or the hub failed.
        ChecksumMismatchError: a file does not match the hub's metadata (or, offline, the manifest).
        WeightFileError: offline and the folder has no manifest, or the manifest is for another revision.
    """
    folder = _model_folder(out, model_id)
    requested = revision or "main"
    if _hub_offline():
        return _verify_offline_copy(folder, model_id, requested)
    info = _model_info(model_id, requested, token)
    siblings = _selected(info.siblings or [], allow_patterns)
    if not siblings:
        raise ModelLoadError(f"no file of '{model_id}' matches allow_patterns {allow_patterns!r}; widen the patterns")
    from huggingface_hub import snapshot_download

    try:
        # The resolved commit, not the branch: the files must be the ones the metadata describes.
        snapshot_download(model_id, revision=info.sha, local_dir=folder, allow_patterns=allow_patterns, token=token)
    except Exception as error:
        raise _hub_error(model_id, requested, error) from error
    records = [_check_against_hub(folder, sibling) for sibling in siblings]
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
    manifest = Manifest(
        model_id=model_id,
        requested_revision=requested,
        commit=str(info.sha),
        allow_patterns=patterns,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        files=records,
    )
    atomic_write_text(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2))
    logger.info("downloaded and verified %d files of %s at %s", len(records), model_id, info.sha)
    return folder


def verify(folder: Path) -> VerifyReport:
    """Check every file listed in ``folder``'s manifest: present, same size, same sha256.

    Raises:
        WeightFileError: the folder has no readable manifest.
        ChecksumMismatchError: a file is missing or differs (one line naming the first ones).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    failures = []
    for record in manifest.files:
        problem = _record_problem(folder, record)
        if problem:
            failures.append(f"{record.path} {problem}")
    if failures:
        shown = "; ".join(failures[:3]) + ("; ..." if len(failures) > 3 else "")
        parents = folder.resolve().parents  # the folder is ROOT/org/name
        root = parents[min(manifest.model_id.count("/"), len(parents) - 1)]
        raise ChecksumMismatchError(
            f"{len(failures)} of {len(manifest.files)} files in {folder} fail verification: {shown} — "
            f"delete them and run `mechscope weights download --model-id {manifest.model_id} "
            f"--revision {manifest.commit} --out {root}` again"
        )
    listed = {record.path for record in manifest.files}
    return VerifyReport(
        folder=str(folder),
        model_id=manifest.model_id,
        commit=manifest.commit,
        files_checked=len(manifest.files),
        bytes_checked=sum(record.size for record in manifest.files),
        unlisted_files=[name for name in _folder_files(folder) if name not in listed],
    )


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a downloaded folder; raises `WeightFileError` when it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise WeightFileError(
            f"{folder} has no {MANIFEST_NAME} to verify against; "
            "download it with `mechscope weights download` on a machine that reaches the hub"
        )
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise WeightFileError(f"{path} is not a valid manifest ({first}); delete it and download again") from None
    for record in manifest.files:
        parts = Path(record.path).parts
        if Path(record.path).is_absolute() or ".." in parts:
            raise WeightFileError(
                f"{path} lists a path outside the folder: {record.path}; delete it and download again"
            )
    return manifest


def _model_folder(out: Path, model_id: str) -> Path:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise ModelLoadError(f"'{model_id}' is not a hub model id; write it as org/name") from None
    return Path(out).joinpath(*model_id.split("/"))


def _hub_offline() -> bool:
    """Whether to work without the hub: ``HF_HUB_OFFLINE`` is set (read now, not at import) or it is unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    from mechscope.models.loading import _hub_reachable

    return not _hub_reachable()


def _verify_offline_copy(folder: Path, model_id: str, revision: str) -> Path:
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        raise WeightFileError(
            f"the hub cannot be reached and {folder} does not exist; "
            f"run `mechscope weights download --model-id {model_id}` on a machine with network"
        )
    if manifest.model_id != model_id:
        raise WeightFileError(
            f"{folder} holds '{manifest.model_id}', not '{model_id}'; choose another --out or delete the folder"
        )
    if revision not in (manifest.requested_revision, manifest.commit) and not manifest.commit.startswith(revision):
        raise WeightFileError(
            f"the hub cannot be reached and {folder} holds revision {manifest.requested_revision} "
            f"(commit {manifest.commit[:12]}), not {revision}; ask for that revision or connect to the hub"
        )
    report = verify(folder)
    logger.warning(
        "hub unreachable: verified %d files of %s against the local manifest (commit %s)",
        report.files_checked,
        model_id,
        manifest.commit,
    )
    return folder


def _model_info(model_id: str, revision: str, token: str | bool | None) -> Any:
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(model_id, revision=revision, files_metadata=True, token=token)
    except Exception as error:
        raise _hub_error(model_id, revision, error) from error


def _hub_error(model_id: str, revision: str, error: Exception) -> ModelLoadError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(error, GatedRepoError):
        return ModelLoadError(f"'{model_id}' is gated; accept its terms on the hub and pass a token (hf auth login)")
    if isinstance(error, RepositoryNotFoundError):
        return ModelLoadError(f"'{model_id}' is not on the hub (or is private); check the id or pass a token")
    if isinstance(error, RevisionNotFoundError):
        return ModelLoadError(f"'{model_id}' has no revision '{revision}'; pass an existing branch, tag or commit")
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ModelLoadError(f"downloading '{model_id}' at '{revision}' failed: {first}; retry (downloads resume)")


def _selected(siblings: Iterable[Any], allow_patterns: list[str] | str | None) -> list[Any]:
    """The hub files ``snapshot_download`` fetches for these patterns (its own filter, so both agree)."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(siblings, allow_patterns=allow_patterns, key=lambda s: s.rfilename))


def _check_against_hub(folder: Path, sibling: Any) -> FileRecord:
    """Hash one downloaded file and compare it with the hub's sha256 (LFS) or git blob id (git)."""
    name = str(sibling.rfilename)
    path = folder / name
    if not path.is_file():
        raise ChecksumMismatchError(f"{name} is missing from {folder} after the download; run the download again")
    size, sha256, blob_id = _digests(path)
    lfs = sibling.lfs
    if lfs is not None:
        expected_size, expected = int(lfs.size), str(lfs.sha256)
        if size != expected_size or sha256 != expected:
            raise ChecksumMismatchError(
                f"{path} does not match the hub: sha256 {sha256[:12]}… ({size} bytes), expected {expected[:12]}… "
                f"({expected_size} bytes); delete it and run the download again"
            )
        return FileRecord(path=name, size=size, sha256=sha256, lfs=True)
    if sibling.blob_id is not None and blob_id != sibling.blob_id:
        raise ChecksumMismatchError(
            f"{path} does not match the hub: git blob {blob_id[:12]}…, expected {str(sibling.blob_id)[:12]}…; "
            "delete it and run the download again"
        )
    return FileRecord(path=name, size=size, sha256=sha256, blob_id=blob_id, lfs=False)


def _record_problem(folder: Path, record: FileRecord) -> str:
    """Why a file fails its manifest record ('' when it passes); the size is checked before hashing."""
    path = folder / record.path
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != record.size:
        return f"has {size} bytes, expected {record.size}"
    sha256 = _digests(path)[1]
    if sha256 != record.sha256:
        return f"sha256 {sha256[:12]}…, expected {record.sha256[:12]}…"
    return ""


def _digests(path: Path) -> tuple[int, str, str]:
    """``(size, sha256, git blob sha1)`` of a file, read once in blocks."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode())  # git's object id, not a security hash
    with path.open("rb") as handle:
        while block := handle.read(_READ_BLOCK):
            sha256.update(block)
            blob.update(block)
    return size, sha256.hexdigest(), blob.hexdigest()


def _folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` as a relative posix path, except the manifest and hub bookkeeping."""
    names = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and relative.parts[0] not in _SKIPPED_DIRS and relative.as_posix() != MANIFEST_NAME:
            names.append(relative.as_posix())
    return names
