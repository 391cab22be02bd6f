"""``run_meta.json``: the provenance record `mechscope.weights.analyze.analyze` writes beside its table.

It records the model id and revision, the code version and commit, Python / torch / transformers / numpy
versions, the platform, timestamp and duration, the command line, device, precision, options, the output
and every weight file with its size and (optionally) sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechscope.storage.atomic import atomic_write_text
from mechscope.weights.linalg import RANK_TOLERANCE_RULE, SVD_PRECISION
from mechscope.weights.reader import Checkpoint
from mechscope.weights.stats import StatsOptions

#: The name of the provenance file written next to the table.
RUN_META_NAME = "run_meta.json"
_HASH_BLOCK = 1 << 23


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 8 MiB blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _code_commit() -> str | None:
    """The git commit of the mechscope source tree, when it runs from a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def build_run_meta(
    checkpoint: Checkpoint,
    *,
    model_id: str,
    revision: str,
    created_at: str,
    options: StatsOptions,
    workers: int,
    output: Path,
    fmt: str,
    rows: int,
    seconds: float,
    cli_args: Sequence[str] | None,
    hash_files: bool,
) -> dict[str, Any]:
    """The provenance record written as ``run_meta.json`` (versions, options, inputs and their hashes)."""
    import numpy
    import transformers

    import mechscope

    files = []
    for file in checkpoint.files:
        record: dict[str, Any] = {"path": str(file), "bytes": file.stat().st_size}
        record["sha256"] = sha256_file(file) if hash_files else None
        files.append(record)
    return {
        "schema_version": 1,
        "model_id": model_id,
        "revision": revision,
        "model_path": str(checkpoint.root),
        "framework": checkpoint.format,
        "code_version": mechscope.__version__,
        "code_commit": _code_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "timestamp": created_at,
        "duration_s": round(seconds, 3),
        "cli_args": list(cli_args) if cli_args is not None else list(sys.argv),
        "device": options.device,
        "precision": {
            "read": "float32 (stored dtypes upcast per tensor; GGUF dequantized)",
            "moments": "float64 accumulation",
            "svd": SVD_PRECISION,
        },
        "options": {
            "sparsity_threshold": options.sparsity_threshold,
            "rank_rtol": options.rank_rtol,
            "rank_tolerance": RANK_TOLERANCE_RULE,
            "spectral": options.spectral,
            "workers": workers,
        },
        "output": {"path": str(output), "format": fmt, "rows": rows},
        "files": files,
    }


def write_run_meta(folder: Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as ``folder / run_meta.json`` (indented JSON), atomically; returns the path."""
    return atomic_write_text(folder / RUN_META_NAME, json.dumps(meta, indent=2) + "\n")
