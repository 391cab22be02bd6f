"""``--backend`` on the CLI: ``concepts bootstrap --backend ray`` starts, uses and stops a Ray instance of its own.

A module of its own, so that it runs after `tests.test_distributed` has stopped the shared instance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechscope.cli.main import app
from mechscope.concepts.concept import write_concepts
from mechscope.concepts.sources import toyworld_concepts
from mechscope.distributed import ModelSpec, make_runner
from mechscope.errors import InputError
from tests.test_distributed import assert_same_file

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is part of the dev install")


def test_cli_bootstrap_on_ray_matches_local(tmp_path: Path) -> None:
    """``--backend ray`` through the CLI: a Ray instance of its own, started and stopped by the command."""
    listed = tmp_path / "concepts.jsonl"
    write_concepts(listed, toyworld_concepts().concepts)
    cli = CliRunner()
    outputs = {}
    for backend in ("local", "ray"):
        out = tmp_path / f"{backend}.h5"
        args = ["concepts", "bootstrap", "-c", str(listed), "-o", str(out), "--layers", "-1", "--batch-size", "40"]
        extra = ["--backend", "ray", "--workers", "1"] if backend == "ray" else []
        result = cli.invoke(app, [*args, *extra, "--json"])
        assert result.exit_code == 0, result.output
        outputs[backend] = out
        assert json.loads(result.stdout)["backend"] == backend
    assert_same_file(outputs["local"], outputs["ray"])
    assert not ray.is_initialized(), "the command stops the Ray instance it started"


def test_local_backend_refuses_ray_options_and_unknown_backends(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--address needs --backend ray"):
        make_runner("local", ModelSpec("toy"), address="auto")
    with pytest.raises(InputError, match="unknown backend 'spark'; use one of local, ray"):
        make_runner("spark", ModelSpec("toy"))
    listed = tmp_path / "concepts.jsonl"
    write_concepts(listed, toyworld_concepts().concepts)
    args = ["concepts", "bootstrap", "-c", str(listed), "-o", str(tmp_path / "e.h5"), "--backend", "spark"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "unknown backend 'spark'" in result.output
    assert not (tmp_path / "e.h5").exists()
