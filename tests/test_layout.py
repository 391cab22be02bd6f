"""The shape of the code: dependencies point one way, analyses stay apart, viz needs no torch, modules stay small.

`cli → api → analyses / viz → core → models / storage / errors`. No analysis package imports another (a piece
two of them need lives in core); viz imports only the analyses' results modules; the storage layer knows no
model. Every package must appear in `LEVELS`, so a new one cannot slip past these rules.
"""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mechscope"

ANALYSES = (
    "lens", "attention", "causal", "steering", "weights", "checks", "zoo", "testing", "moe", "probing", "concepts",
    "sae",
)  # fmt: skip
LEVELS = {
    "errors": 0,
    "progress": 0,
    "text": 0,
    "toyworld": 0,
    "storage": 0,
    "models": 0,
    "core": 1,
    "distributed": 1,  # schedules shards; knows the model only through core's load
    **dict.fromkeys(ANALYSES, 2),
    "viz": 2,
    "api": 3,
    "web": 4,
    "cli": 5,
}
#: Modules of one package that are separate analyses: they share code only through the package's
#: bottom modules (metrics, results), never by importing each other.
SIBLINGS = {
    "causal": ("ablation", "patching", "circuit"),
    # Each report uses the kit (page, charts, colors), never another report.
    "viz": (
        "lens_report",
        "attention_report",
        "patching_report",
        "ablation_report",
        "circuit_report",
        "compare_report",
        "weights_diff_report",
        "moe_report",
        "moe_specialization_report",
        "moe_paths_report",
        "moe_vocab_report",
        "moe_compression_report",
        "steer_compare_report",
        "probe_battery_report",
        "probing_report",
        "concepts_report",
        "sae_report",
    ),
}
#: Modules allowed over 500 lines, with the reason.
LONG_MODULES: dict[str, str] = {}
#: Modules that must import without torch (and without transformers).
TORCH_FREE = (
    "mechscope",
    "mechscope.errors",
    "mechscope.progress",
    "mechscope.text",
    "mechscope.models.families",
    "mechscope.models.registry",
    "mechscope.cli.entry",
    "mechscope.storage.atomic",
    "mechscope.storage.tables",
    "mechscope.storage.tensors",
    "mechscope.core.layers",
    "mechscope.core.batching",
    "mechscope.causal.results",
    "mechscope.attention.results",
    "mechscope.lens.results",
    "mechscope.moe.results",
    "mechscope.concepts.concept",
    "mechscope.concepts.templates",
    "mechscope.concepts.lens_results",
    "mechscope.concepts.interpreter_results",
    "mechscope.concepts.evaluation_results",
    "mechscope.concepts.convergence_results",
    "mechscope.moe.intervention_results",
    "mechscope.moe.path_results",
    "mechscope.moe.vocab_results",
    "mechscope.moe.vocab",
    "mechscope.moe.readout",
    "mechscope.moe.specialization_results",
    "mechscope.moe.domain_sets",
    "mechscope.moe.token_types",
    "mechscope.moe.specialization",
    "mechscope.moe.context",
    "mechscope.cli.moe.corpus",
    "mechscope.cli.moe.experts",
    "mechscope.moe.compression_results",
    "mechscope.moe.compression",
    "mechscope.cli.moe.compression",
    "mechscope.steering.train_results",
    "mechscope.steering.rollout_results",
    "mechscope.steering.compare_results",
    "mechscope.steering.search_results",
    "mechscope.probing.results",
    "mechscope.probing.geometry_results",
    "mechscope.probing.direction_results",
    "mechscope.probing.battery_results",
    "mechscope.probing.analysis_results",
    "mechscope.cli.main",
    "mechscope.distributed",
    "mechscope.distributed.parts",
    "mechscope.distributed.runner",
    "mechscope.distributed.spec",
)


def _imports(path: Path) -> set[str]:
    """Every ``mechscope...`` module ``path`` imports (anywhere in the file, lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("mechscope.")}


def _modules() -> list[tuple[str, Path]]:
    """``(package, path)`` of every module below the top level."""
    return [(path.relative_to(SRC).parts[0], path) for path in sorted(SRC.rglob("*.py")) if path.parent != SRC]


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0].removesuffix(".py")


def test_every_package_has_a_level() -> None:
    packages = {_package(path) for path in SRC.iterdir() if path.suffix == ".py" or path.is_dir()}
    packages -= {"__init__", "__main__", "py", "__pycache__"}
    packages = {p for p in packages if (SRC / p).is_dir() or (SRC / f"{p}.py").is_file()}
    assert packages == set(LEVELS), f"classify {packages ^ set(LEVELS)} in LEVELS"


@pytest.mark.parametrize("package", sorted(LEVELS))
def test_dependencies_point_one_way(package: str) -> None:
    single = SRC / f"{package}.py"
    for path in [single] if single.is_file() else sorted((SRC / package).rglob("*.py")):
        where = path.relative_to(SRC)
        for name in _imports(path):
            target = name.split(".")[1]
            if target not in LEVELS:
                continue  # a name imported from the top-level package (``from mechscope import ...``)
            assert LEVELS[target] <= LEVELS[package], f"{where} imports {name}, a layer above it"
            if package == "storage":
                assert target in ("storage", "errors"), f"{where} imports {name}: storage knows no model"
            if package in ("progress", "errors", "text") or (package == "toyworld" and target != "toyworld"):
                raise AssertionError(f"{where} imports {name}: a bottom module imports nothing of mechscope")
            if target != package and package in ANALYSES:
                assert target not in ANALYSES, f"{where} imports {name}: analyses share code through core"
            if package == "viz" and target in ANALYSES:
                module = name.split(".")[2] if len(name.split(".")) > 2 else ""
                ok = module == "results" or module.endswith("_results")
                assert ok, f"{where} imports {name}: viz takes results, never analysis modules"


@pytest.mark.parametrize("package", sorted(SIBLINGS))
def test_sibling_analyses_do_not_import_each_other(package: str) -> None:
    for module in SIBLINGS[package]:
        for name in _imports(SRC / package / f"{module}.py"):
            parts = name.split(".")
            inside = parts[1] == package and len(parts) > 2
            assert not (inside and parts[2] in SIBLINGS[package] and parts[2] != module), f"{module} imports {name}"


def test_torch_free_modules_import_without_torch() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import mechscope.viz\n"
        f"names = {list(TORCH_FREE)!r}\n"
        "names += ['mechscope.viz.' + m.name for m in pkgutil.iter_modules(mechscope.viz.__path__)]\n"
        "for name in names: importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def _code_lines(path: Path) -> int:
    """Lines of ``path`` outside its docstrings: runnable examples make a module longer, not bigger."""
    source = path.read_text(encoding="utf-8")
    documented = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                documented += (first.end_lineno or first.lineno) - first.lineno + 1
    return len(source.splitlines()) - documented


def test_modules_stay_small() -> None:
    sizes = {str(path.relative_to(SRC)): _code_lines(path) for path in SRC.rglob("*.py")}
    assert statistics.median(sizes.values()) <= 200
    long = {name: lines for name, lines in sizes.items() if lines > 500 and name not in LONG_MODULES}
    assert not long, f"modules over 500 lines need a reason in LONG_MODULES: {long}"
