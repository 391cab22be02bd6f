"""Every ``mechscope moe`` command on a tiny random checkpoint of every MoE family, through the real CLI.

The analyses' numbers are checked against independent computations in their own test files; here each
command must run on each family's own modules (packed experts, routers, shared experts, biases) and print
JSON that validates back to its result, with the routing it reports equal to `mechscope.moe.trace`'s, which
`tests/test_moe_core.py` holds equal to the routers' own outputs bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

import mechscope as ms
from mechscope.causal.results import AblationResult
from mechscope.cli.main import app
from tests.conftest import MOE_CORPUS, MOE_FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

PROMPT = MOE_CORPUS[0]


def _commands(model: str, corpus: str, layer: int) -> dict[str, tuple[list[str], type[BaseModel]]]:
    """Each command's arguments (``--json`` added by the test) and the result model its JSON must validate to."""
    on = ["-m", model]
    return {
        "info": (["info", *on], ms.moe.MoEInfo),
        "trace": (["trace", *on, "-p", PROMPT], ms.moe.RoutingTrace),
        "utilization": (["utilization", *on, "--prompts", corpus], ms.moe.Utilization),
        "specialization": (["specialization", *on], ms.moe.Specialization),
        "context": (["context", *on, "--token", " the", "--prompts", corpus], ms.moe.ContextRouting),
        "pipeline": (["pipeline", *on, "--prompts", corpus], ms.moe.Pipeline),
        "coactivation": (["coactivation", *on, "--layer", str(layer), "--prompts", corpus], ms.moe.Coactivation),
        "predict": (["predict", *on, "--prompts", corpus, "--test-share", "0.5"], ms.moe.RoutingPrediction),
        "ablate": (["ablate", *on, "-p", PROMPT, "--layer", str(layer), "--target", " the"], AblationResult),
        "route": (["route", *on, "-p", PROMPT, "--force", f"{layer}:1", "--target", " the"], ms.moe.RouteResult),
        "compare": (["compare", "--model1", model, "--model2", model, "--prompts", corpus], ms.moe.RoutingComparison),
        "vocab": (["vocab", *on, "--top-k", "3", "--prompts", corpus], ms.moe.VocabContribution),
        "compression": (
            ["compression", *on, "--layer", str(layer), "--prompts", corpus, "--verify"],
            ms.moe.Compression,
        ),
    }


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_every_moe_command_runs_on_the_family(
    family: str, tiny_dir: Callable[[str], Path], load_tiny: Callable[..., ms.LanguageModel], tmp_path: Path
) -> None:
    lm = load_tiny(family)
    layer = lm.arch.moe_layers[-1]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(MOE_CORPUS * 2), encoding="utf-8")
    runner = CliRunner()
    outputs: dict[str, Any] = {}
    for name, (args, model) in _commands(str(tiny_dir(family)), str(corpus), layer).items():
        result = runner.invoke(app, ["moe", *args, "--json"])
        assert result.exit_code == 0, f"moe {name} on {family}: {result.output}"
        outputs[name] = model.model_validate(json.loads(result.stdout))
    trace = ms.moe.trace(lm, PROMPT)
    assert outputs["trace"] == trace
    forced = outputs["route"].routed_share[layer]
    assert forced[1] == 1.0  # --force gives the expert every token
    assert outputs["compare"].layer(layer).top1_agreement == 1.0  # a model agrees with itself
    counts = outputs["coactivation"].counts
    assert sum(counts) == lm.arch.top_k * outputs["coactivation"].tokens


@pytest.mark.parametrize(
    "args",
    [
        ["info"],
        ["trace", "-p", PROMPT],
        ["utilization", "-p", PROMPT],
        ["specialization"],
        ["context", "--token", " is", "-p", PROMPT],
        ["pipeline", "-p", PROMPT],
        ["coactivation", "--layer", "1", "-p", PROMPT],
        ["predict", "-p", PROMPT],
        ["ablate", "-p", PROMPT, "--target", " Paris"],
        ["route", "-p", PROMPT, "--force", "1:0"],
        ["vocab"],
        ["compression", "--layer", "1"],
    ],
    ids=lambda args: args[0],
)
def test_every_moe_command_refuses_a_dense_model_in_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["moe", args[0], "-m", "toy", *args[1:]])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "has no experts" in result.output
