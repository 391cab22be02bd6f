"""Every ordinary mistake on the command line: exit status 2, one line naming the problem, nothing left behind.

Each case runs one command with one bad input (a bad option value, a missing or unreadable file, an output
path that cannot be written, a file of the wrong kind) and checks what a user sees: status 2, exactly one
line on stderr starting ``mechscope: error:`` and containing the expected words, no traceback anywhere, and
no file created or left half-written in the working folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechscope.cli.main import app

PROMPT = "The capital of France is"
PATCH = [
    "patch",
    "--clean",
    PROMPT,
    "--corrupted",
    "The capital of Japan is",
    "--correct",
    " Paris",
    "--wrong",
    " Tokyo",
]


def _files(tmp: Path) -> dict[str, Callable[[], Path]]:
    """Inputs a case can name: written into ``tmp`` before the command runs."""

    def text(name: str, content: bytes) -> Callable[[], Path]:
        def make() -> Path:
            path = tmp / name
            path.write_bytes(content)
            return path

        return make

    return {
        "prompts": text("prompts.txt", b"The sea is calm.\nThe ship sails.\n"),
        "other_prompts": text("other.txt", b"Arr, the sea be calm.\nArr, the ship sails.\n"),
        "latin1": text("latin1.txt", "caf\xe9 au lait\n".encode("latin-1")),
        "not_safetensors": text("fake.safetensors", b"this is not a safetensors file at all"),
        "existing": text("existing.txt", b"x\n"),
        "empty": text("empty.txt", b"\n   \n"),
        "concepts": text("concepts.jsonl", b'{"id": "toy:dog", "term": "dog"}\n{"id": "toy:cat", "term": "cat"}\n'),
    }


#: (id, arguments with {placeholders}, words the error line must contain)
CASES: list[tuple[str, list[str], str]] = [
    (
        "sae-train-two-architectures",
        ["sae", "train", "--site", "resid_post.2", "--width", "64", "-o", "{tmp}/s", "--k", "4", "--l1", "1"],
        "exactly one",
    ),
    (
        "sae-train-tokens",
        ["sae", "train", "--site", "resid_post.2", "--width", "64", "-o", "{tmp}/s", "--k", "4", "--tokens", "2X"],
        "--tokens wants a count",
    ),
    ("steer-other-model", ["steer", "-m", "toy-moe", "-p", PROMPT, "-d", "{direction}"], "--force"),
    ("sweep-other-model", ["steer", "sweep", "-m", "toy-moe", "-p", PROMPT, "-d", "{direction}"], "made for"),
    (
        "analyze-tuned-other-model",
        ["analyze", "-m", "toy-moe", "-p", PROMPT, "--lens", "tuned", "--tuned", "{tuned}"],
        "--force",
    ),
    (
        "directions-layer",
        [
            "directions",
            "compute",
            "--positive",
            "{prompts}",
            "--negative",
            "{other_prompts}",
            "--layers",
            "9",
            "-o",
            "{tmp}/dirs",
        ],
        "out of range",
    ),
    (
        "ablate-resample-without-prompt",
        ["ablate", "-p", PROMPT, "--method", "resample", "--target", " Paris"],
        "resample-from",
    ),
    ("circuit-top", ["circuit", "export", "-i", "{ablation}", "-o", "{tmp}/c.json", "--top", "0"], "top"),
    ("steer-no-direction", ["steer", "-p", PROMPT], "direction"),
    ("ablate-component", ["ablate", "-p", PROMPT, "--component", "bogus", "--target", " Paris"], "component"),
    ("ablate-method", ["ablate", "-p", PROMPT, "--method", "bogus", "--target", " Paris"], "method"),
    ("ablate-regex", ["ablate", "-p", PROMPT, "--criterion", "regex:(["], "regex"),
    ("ablate-criterion", ["ablate", "-p", PROMPT, "--criterion", "bogus"], "criterion"),
    (
        "ablate-reference-missing",
        ["ablate", "-p", PROMPT, "--method", "mean", "--target", " Paris", "--reference", "{tmp}/nope.txt"],
        "nope.txt",
    ),
    (
        "ablate-reference-latin1",
        ["ablate", "-p", PROMPT, "--method", "mean", "--target", " Paris", "--reference", "{latin1}"],
        "UTF-8",
    ),
    ("ablate-target-multi", ["ablate", "-p", PROMPT, "--target", " Paris is"], "single token"),
    (
        "tuned-text-missing",
        ["tuned-lens", "-m", "toy", "--text", "{tmp}/nope.txt", "-o", "{tmp}/t.safetensors"],
        "nope.txt",
    ),
    ("tuned-text-latin1", ["tuned-lens", "-m", "toy", "--text", "{latin1}", "-o", "{tmp}/t.safetensors"], "UTF-8"),
    ("tuned-too-few", ["tuned-lens", "-m", "toy", "--text", "{prompts}", "-o", "{tmp}/t.safetensors"], "documents"),
    ("tuned-steps-0", ["tuned-lens", "-m", "toy", "--steps", "0", "-o", "{tmp}/t.safetensors"], "steps"),
    (
        "analyze-tuned-not-safetensors",
        ["analyze", "-p", PROMPT, "--lens", "tuned", "--tuned", "{not_safetensors}"],
        "safetensors",
    ),
    (
        "analyze-tuned-missing",
        ["analyze", "-p", PROMPT, "--lens", "tuned", "--tuned", "{tmp}/none.safetensors"],
        "tuned-lens",
    ),
    ("analyze-lens", ["analyze", "-p", PROMPT, "--lens", "bogus"], "lens"),
    ("analyze-top-k-huge", ["analyze", "-p", PROMPT, "--top-k", "100000"], "top-k"),
    ("analyze-top-k-0", ["analyze", "-p", PROMPT, "--top-k", "0"], "top"),
    ("analyze-layer", ["analyze", "-p", PROMPT, "--layers", "9"], "out of range"),
    ("analyze-empty-prompt", ["analyze", "-p", "   "], "empty"),
    ("analyze-html-folder", ["analyze", "-p", PROMPT, "--html", "{tmp}"], "folder"),
    ("analyze-html-missing-folder", ["analyze", "-p", PROMPT, "--html", "{tmp}/no/such/r.html"], "does not exist"),
    ("analyze-model-missing", ["analyze", "-p", PROMPT, "-m", "{tmp}/no-model"], "no-model"),
    ("analyze-dtype", ["analyze", "-p", PROMPT, "--dtype", "float7"], "dtype"),
    ("analyze-device-cuda", ["analyze", "-p", PROMPT, "--device", "cuda:7"], "cuda"),
    ("analyze-device-map", ["analyze", "-p", PROMPT, "--device-map", "bogus"], "device_map"),
    ("analyze-device-bogus", ["analyze", "-p", PROMPT, "--device", "bogus"], "device"),
    ("attention-layer", ["attention", "-p", PROMPT, "--layer", "9"], "out of range"),
    ("attention-head", ["attention", "-p", PROMPT, "--layer", "1", "--head", "9"], "head 9"),
    ("attention-threshold", ["attention", "-p", PROMPT, "--layer", "1", "--threshold", "0"], "threshold"),
    ("heads-top-negative", ["heads", "--top", "-3"], "top"),
    ("patch-layer-site", [*PATCH, "--site", "attn_pattern"], "patch"),
    (
        "patch-unequal",
        [
            "patch",
            "--clean",
            PROMPT,
            "--corrupted",
            "The capital of Spain is",
            "--correct",
            " Paris",
            "--wrong",
            " Madrid",
        ],
        "equal length",
    ),
    ("patch-html-folder", [*PATCH, "--html", "{tmp}"], "folder"),
    ("steer-direction-not-safetensors", ["steer", "-p", PROMPT, "-d", "{not_safetensors}"], "safetensors"),
    ("steer-direction-missing", ["steer", "-p", PROMPT, "-d", "{tmp}/none.safetensors"], "none.safetensors"),
    ("steer-max-new-tokens-0", ["steer", "-p", PROMPT, "-d", "{direction}", "--max-new-tokens", "0"], "max-new-tokens"),
    ("steer-nan", ["steer", "-p", PROMPT, "-d", "{direction}", "-c", "nan"], "coefficient"),
    ("steer-inf", ["steer", "-p", PROMPT, "-d", "{direction}", "-c", "inf"], "coefficient"),
    ("steer-layer", ["steer", "-p", PROMPT, "-d", "{direction}", "--layer", "9"], "out of range"),
    ("steer-positions", ["steer", "-p", PROMPT, "-d", "{direction}", "--positions", "bogus"], "positions"),
    ("sweep-empty", ["steer", "sweep", "-p", PROMPT, "-d", "{direction}", "--coefficients", ""], "coefficients"),
    ("sweep-commas", ["steer", "sweep", "-p", PROMPT, "-d", "{direction}", "--coefficients", ",,,"], "coefficients"),
    ("sweep-nan", ["steer", "sweep", "-p", PROMPT, "-d", "{direction}", "--coefficients", "1,nan"], "coefficients"),
    ("sweep-words", ["steer", "sweep", "-p", PROMPT, "-d", "{direction}", "--coefficients", "a,b"], "coefficients"),
    (
        "directions-missing",
        ["directions", "compute", "--positive", "{tmp}/nope.txt", "--negative", "{prompts}", "-o", "{tmp}/dirs"],
        "nope.txt",
    ),
    (
        "directions-latin1",
        ["directions", "compute", "--positive", "{latin1}", "--negative", "{prompts}", "-o", "{tmp}/dirs"],
        "UTF-8",
    ),
    (
        "directions-identical",
        ["directions", "compute", "--positive", "{prompts}", "--negative", "{prompts}", "-o", "{tmp}/dirs"],
        "same",
    ),
    (
        "directions-out-is-file",
        ["directions", "compute", "--positive", "{prompts}", "--negative", "{other_prompts}", "-o", "{existing}"],
        "existing.txt",
    ),
    (
        "directions-method",
        [
            "directions",
            "compute",
            "--positive",
            "{prompts}",
            "--negative",
            "{prompts}",
            "--method",
            "bogus",
            "-o",
            "{tmp}/dirs",
        ],
        "method",
    ),
    ("circuit-missing", ["circuit", "export", "-i", "{tmp}/none.json", "-o", "{tmp}/c.json"], "none.json"),
    ("circuit-not-a-result", ["circuit", "export", "-i", "{prompts}", "-o", "{tmp}/c.json"], "result"),
    ("circuit-format", ["circuit", "export", "-i", "{ablation}", "-o", "{tmp}/c.xyz"], "format"),
    ("circuit-out-folder", ["circuit", "export", "-i", "{ablation}", "-o", "{tmp}"], "folder"),
    ("compare-missing", ["compare", "--model1", "toy", "--model2", "{tmp}/no-model", "-p", PROMPT], "no-model"),
    (
        "compare-html-folder",
        ["compare", "--model1", "toy", "--model2", "toy", "-p", PROMPT, "--html", "{tmp}"],
        "folder",
    ),
    (
        "compare-dtype",
        ["compare", "--model1", "toy", "--model2", "toy", "--model2-dtype", "int3", "-p", PROMPT],
        "dtype",
    ),
    (
        "weights-download-offline",
        ["weights", "download", "--model-id", "org/name", "--out", "{tmp}/models"],
        "cannot be reached",
    ),
    ("doctor-missing", ["doctor", "-m", "{tmp}/no-model"], "no-model"),
    ("weights-analyze-suffix", ["weights", "analyze", "{toy}", "--out", "{tmp}/w.xlsx"], "xlsx"),
    ("weights-analyze-missing", ["weights", "analyze", "{tmp}/none", "--out", "{tmp}/w.csv"], "none"),
    (
        "weights-diff-suffix",
        ["weights", "diff", "--base", "{toy}", "--finetuned", "{toy}", "--out", "{tmp}/d.txt"],
        "d.txt",
    ),
    (
        "weights-census-ray-workers-local",
        ["weights", "analyze", "{toy}", "{toy}", "--out", "{tmp}/c.csv", "--ray-workers", "2"],
        "--ray-workers needs --backend ray",
    ),
    (
        "weights-census-twice",
        ["weights", "analyze", "{toy}", "{toy}", "--out", "{tmp}/c.csv"],
        "name each checkpoint once",
    ),
    ("weights-verify-no-manifest", ["weights", "verify", "{tmp}"], "manifest"),
    ("moe-info-dense", ["moe", "info", "-m", "toy"], "has no experts (family llama is dense)"),
    ("moe-trace-dense", ["moe", "trace", "-m", "toy", "-p", PROMPT], "has no experts"),
    ("moe-utilization-dense", ["moe", "utilization", "-m", "toy", "-p", PROMPT], "has no experts"),
    ("moe-trace-layer", ["moe", "trace", "-p", PROMPT, "--layer", "9"], "out of range"),
    ("moe-trace-empty-prompt", ["moe", "trace", "-p", "  "], "empty"),
    ("moe-utilization-empty-corpus", ["moe", "utilization", "--prompts", "{empty}"], "corpus is empty"),
    ("moe-utilization-no-corpus", ["moe", "utilization"], "--prompts"),
    ("moe-utilization-shard-size", ["moe", "utilization", "-p", PROMPT, "--shard-size", "0"], "shard-size"),
    ("moe-utilization-backend", ["moe", "utilization", "-p", PROMPT, "--backend", "spark"], "unknown backend 'spark'"),
    (
        "steer-rollouts-backend",
        [
            "steer",
            "rollouts",
            "--questions",
            "{prompts}",
            "--vectors",
            "{direction}",
            "--backend",
            "spark",
            "-o",
            "{tmp}/r",
        ],
        "unknown backend 'spark'",
    ),
    (
        "steer-rollouts-workers-0",
        [
            "steer",
            "rollouts",
            "--questions",
            "{prompts}",
            "--vectors",
            "{direction}",
            "--workers",
            "0",
            "-o",
            "{tmp}/r",
        ],
        "--workers must be at least 1",
    ),
    ("circuit-probes-run-backend", ["circuit", "probes", "run", "--backend", "spark"], "unknown backend 'spark'"),
    ("moe-utilization-missing", ["moe", "utilization", "--prompts", "{tmp}/nope.txt"], "nope.txt"),
    ("moe-utilization-latin1", ["moe", "utilization", "--prompts", "{latin1}"], "UTF-8"),
    ("moe-utilization-cold", ["moe", "utilization", "-p", PROMPT, "--cold-threshold", "2"], "cold threshold"),
    ("moe-utilization-batch-size", ["moe", "utilization", "-p", PROMPT, "--batch-size", "0"], "batch-size"),
    ("moe-utilization-out-folder", ["moe", "utilization", "-p", PROMPT, "--out", "{tmp}"], "folder"),
    ("moe-ablate-dense", ["moe", "ablate", "-m", "toy", "-p", PROMPT, "--target", " Paris"], "has no experts"),
    ("moe-ablate-layer", ["moe", "ablate", "-p", PROMPT, "--layer", "9", "--target", " Paris"], "out of range"),
    ("moe-ablate-expert", ["moe", "ablate", "-p", PROMPT, "--experts", "4", "--target", " Paris"], "(0..3)"),
    ("moe-ablate-experts-malformed", ["moe", "ablate", "-p", PROMPT, "--experts", "x", "--target", " P"], "--experts"),
    ("moe-ablate-no-metric", ["moe", "ablate", "-p", PROMPT], "--target"),
    ("moe-ablate-html-folder", ["moe", "ablate", "-p", PROMPT, "--target", " Paris", "--html", "{tmp}"], "folder"),
    ("moe-route-dense", ["moe", "route", "-m", "toy", "-p", PROMPT, "--force", "1:0"], "has no experts"),
    ("moe-route-force-layer", ["moe", "route", "-p", PROMPT, "--force", "9:0"], "out of range"),
    ("moe-route-force-expert", ["moe", "route", "-p", PROMPT, "--force", "1:7"], "expert 7 is out of range"),
    ("moe-route-force-malformed", ["moe", "route", "-p", PROMPT, "--force", "x"], "LAYER:EXPERT"),
    ("moe-route-nothing", ["moe", "route", "-p", PROMPT], "--force"),
    ("moe-route-force-twice", ["moe", "route", "-p", PROMPT, "--force", "1:0,1:2"], "twice"),
    ("moe-route-forced-and-forbidden", ["moe", "route", "-p", PROMPT, "--force", "1:0", "--forbid", "1:0"], "both"),
    ("moe-route-forbid-all", ["moe", "route", "-p", PROMPT, "--forbid", "2:0,2:1,2:3"], "fewer than top-k"),
    ("moe-route-target", ["moe", "route", "-p", PROMPT, "--force", "1:0", "--target", " Paris Paris"], "tokens"),
    (
        "moe-compare-empty-corpus",
        ["moe", "compare", "--model1", "toy-moe", "--model2", "toy-moe", "--prompts", "{empty}"],
        "corpus is empty",
    ),
    ("moe-compare-dense", ["moe", "compare", "--model1", "toy", "--model2", "toy-moe", "-p", PROMPT], "no experts"),
    ("moe-compare-no-corpus", ["moe", "compare", "--model1", "toy-moe", "--model2", "toy-moe"], "--prompts"),
    (
        "weights-directions-not-safetensors",
        ["weights", "directions", "-m", "{toy}", "-d", "{not_safetensors}"],
        "safetensors",
    ),
    ("circuit-dataset-per-tool", ["circuit", "dataset", "create", "-o", "{tmp}/p.json", "--per-tool", "0"], "per_tool"),
    ("circuit-dataset-show-missing", ["circuit", "dataset", "show", "{tmp}/none.json"], "does not exist"),
    ("circuit-collect-txt", ["circuit", "collect", "-m", "toy", "-d", "{prompts}", "-o", "{tmp}/a"], ".jsonl or .csv"),
    ("circuit-analyze-missing", ["circuit", "analyze", "-a", "{tmp}/none", "--layer", "1"], "no activation folder"),
    (
        "circuit-directions-missing",
        ["circuit", "directions", "-a", "{tmp}/none", "--layer", "1", "-o", "{tmp}/d"],
        "no activation folder",
    ),
    (
        "circuit-visualize-missing",
        ["circuit", "visualize", "-a", "{tmp}/none", "--html", "{tmp}/v.html"],
        "no activation folder",
    ),
    ("circuit-probes-battery", ["circuit", "probes", "run", "-m", "toy", "-b", "{tmp}/none.yaml"], "no battery file"),
    (
        "circuit-steer-missing",
        ["circuit", "steer", "-m", "toy", "-a", "{tmp}/none", "--layer", "1", "-p", PROMPT],
        "no activation folder",
    ),
    ("concepts-list-source", ["concepts", "list", "--source", "wikipedia", "-o", "{tmp}/c.jsonl"], "wikipedia"),
    ("concepts-list-pos", ["concepts", "list", "--pos", "pronoun", "-o", "{tmp}/c.jsonl"], "pronoun"),
    ("concepts-list-file-missing", ["concepts", "list", "--source", "file", "-o", "{tmp}/c.jsonl"], "--file"),
    (
        "concepts-list-empty",
        ["concepts", "list", "--source", "file", "--file", "{empty}", "-o", "{tmp}/c.jsonl"],
        "empty",
    ),
    (
        "concepts-bootstrap-missing",
        ["concepts", "bootstrap", "-m", "toy", "-c", "{tmp}/none.jsonl", "-o", "{tmp}/e.h5"],
        "none.jsonl",
    ),
    (
        "concepts-bootstrap-layer",
        ["concepts", "bootstrap", "-m", "toy", "-c", "{concepts}", "--layers", "9", "-o", "{tmp}/e.h5"],
        "layer",
    ),
    (
        "concepts-bootstrap-pooling",
        ["concepts", "bootstrap", "-m", "toy", "-c", "{concepts}", "--pooling", "max", "-o", "{tmp}/e.h5"],
        "max",
    ),
    (
        "concepts-bootstrap-backend",
        ["concepts", "bootstrap", "-c", "{concepts}", "--backend", "spark", "-o", "{tmp}/e.h5"],
        "unknown backend",
    ),
    (
        "concepts-bootstrap-address-local",
        ["concepts", "bootstrap", "-c", "{concepts}", "--address", "auto", "-o", "{tmp}/e.h5"],
        "--address needs --backend ray",
    ),
    (
        "concepts-bootstrap-workers-0",
        ["concepts", "bootstrap", "-c", "{concepts}", "--backend", "ray", "--workers", "0", "-o", "{tmp}/e.h5"],
        "--workers must be at least 1",
    ),
    ("concepts-show-not-hdf5", ["concepts", "show", "{prompts}"], "prompts.txt"),
    ("concepts-refine-missing", ["concepts", "refine", "-m", "toy", "--data", "{tmp}/none.h5"], "none.h5"),
    (
        "concepts-evaluate-missing",
        ["concepts", "evaluate", "--data", "{tmp}/none.h5", "--interpreter", "{tmp}/none"],
        "none",
    ),
    (
        "concepts-train-missing",
        ["concepts", "interpreter", "train", "--data", "{tmp}/none.h5", "-o", "{tmp}/interp"],
        "none.h5",
    ),
    ("concepts-monitor-missing", ["concepts", "monitor", "-m", "toy", "--lenses", "{tmp}/none", "-p", PROMPT], "none"),
    (
        "concepts-convergence-unknown",
        ["concepts", "validate-convergence", "-m", "toy", "--concepts", "xyzzy.n.01", "--max-n", "4"],
        "xyzzy",
    ),
    (
        "concepts-steer-missing",
        ["concepts", "steer", "-m", "toy", "--data", "{tmp}/none.h5", "--concept", "dog.n.01", "-p", PROMPT],
        "none.h5",
    ),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Valid inputs the cases need (a direction, an ablation result, the toy's folder), made once."""
    from mechscope.models.registry import organism_path

    root = tmp_path_factory.mktemp("shared")
    runner = CliRunner()
    positive, negative = root / "pos.txt", root / "neg.txt"
    positive.write_text("<pirate> Tell me about the sea.\n<pirate> Where is the ship?\n", encoding="utf-8")
    negative.write_text("<formal> Tell me about the sea.\n<formal> Where is the ship?\n", encoding="utf-8")
    made = runner.invoke(
        app,
        [
            "directions",
            "compute",
            "--positive",
            str(positive),
            "--negative",
            str(negative),
            "--layers",
            "1",
            "-o",
            str(root / "dirs"),
        ],
    )
    assert made.exit_code == 0, made.output
    ablation = root / "ablation.json"
    done = runner.invoke(app, ["ablate", "-p", PROMPT, "--target", " Paris", "--out", str(ablation), "--json"])
    assert done.exit_code == 0, done.output
    direction = next((root / "dirs").glob("*.safetensors"))
    from mechscope.lens.tuned import TunedLens

    toy = organism_path("toy")
    tuned = TunedLens(4, 128).save(root / "toy.tuned.safetensors", model=str(toy))  # toy and toy-moe share shape
    return {"direction": str(direction), "ablation": str(ablation), "toy": str(toy), "tuned": str(tuned)}


@pytest.mark.parametrize(("args", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_is_one_line_and_exit_2(
    args: list[str], words: str, tmp_path: Path, shared: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    names = {key: str(make()) for key, make in _files(tmp_path).items() if "{" + key + "}" in " ".join(args)}
    names.update(shared)
    names["tmp"] = str(work)
    filled = [arg.format(**names) for arg in args]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, filled)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), result.stderr
    assert words.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"files left behind: {set(after) - set(before)}"


def test_force_applies_a_direction_made_on_another_model(shared: dict[str, str]) -> None:
    args = ["steer", "-m", "toy-moe", "-p", PROMPT, "-d", shared["direction"], "--max-new-tokens", "2", "--json"]
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output


def test_an_empty_circuit_has_no_edge_and_says_so(shared: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "circuit.html"  # the format comes from the suffix
    result = CliRunner().invoke(
        app, ["circuit", "export", "-i", shared["ablation"], "-o", str(out), "--threshold", "9"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "graph is empty" in result.stderr
    as_json = tmp_path / "circuit.json"
    CliRunner().invoke(app, ["circuit", "export", "-i", shared["ablation"], "-o", str(as_json), "--threshold", "9"])
    from mechscope.causal import CircuitGraph

    graph = CircuitGraph.model_validate_json(as_json.read_text(encoding="utf-8"))
    assert [n.id for n in graph.nodes] == ["input", "output"] and graph.edges == []


def test_ctrl_c_while_loading_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from mechscope.cli.options import ModelOptions

    def interrupted(self: ModelOptions) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelOptions, "load", interrupted)
    result = CliRunner().invoke(app, ["analyze", "-p", PROMPT])
    assert result.exit_code == 2 and result.stderr.strip().startswith("mechscope: error: interrupted")
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_before_the_cli_is_imported_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mechscope.cli.main
    from mechscope.cli.entry import main

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mechscope.cli.main, "app", interrupted)
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().startswith("mechscope: error: interrupted")
