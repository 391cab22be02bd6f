"""The examples in the package's docstrings run and print what they show (issue 14).

Every module of ``mechscope`` is imported and its doctests are run, one test per module so that a failure
names it. The examples run offline: on the bundled organisms (``ms.load("toy")``), on tiny random models
built into temporary folders, or on files written to ``tempfile.mkdtemp()``. A ``+SKIP`` directive is only
allowed where `ALLOWED_SKIPS` says why, and the public API's modules must each have an example that runs; in
them every public function and class has one of its own (issue 24), except exceptions, protocols, enums, result
types (the ``*results`` modules) and the classes a function of the module returns (its example shows them).
Every other module is internal and says why in `INTERNAL` (or implements a package whose ``__all__`` is public).
"""

from __future__ import annotations

import ast
import doctest
import enum
import functools
import importlib
import inspect
import io
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import mechscope

PACKAGE_DIR = Path(mechscope.__file__).resolve().parent
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Modules whose import has side effects, checked from their source instead: module -> why.
NOT_IMPORTED = {"mechscope.__main__": "importing it runs the command line (`python -m mechscope`)"}

#: Third-party packages of the optional extras; a module needing a missing one is skipped, naming it.
OPTIONAL_DEPENDENCIES = frozenset(
    {"gguf", "pyarrow", "ray", "nnsight", "transformer_lens", "sentence_transformers", "sklearn"}
)

#: The only ``+SKIP`` examples allowed: module -> (how many, why they cannot run in the test suite).
ALLOWED_SKIPS: dict[str, tuple[int, str]] = {
    "mechscope.weights.download": (2, "download() fetches a checkpoint from the Hugging Face Hub: needs the network"),
    "mechscope.distributed.ray_runner": (
        1,
        "starts a Ray instance and a worker (seconds); tests/test_distributed.py runs the same on a shared one",
    ),
}

#: Modules of the public API: each must have at least one example, and none of them skipped.
PUBLIC_API = (
    "mechscope",
    "mechscope.core.lm",
    "mechscope.core.ops",
    "mechscope.core.cache",
    "mechscope.api.analyzer",
    "mechscope.api.model_analyzer",
    "mechscope.causal",
    "mechscope.lens.logit",
    "mechscope.storage.tensors",
)

_SKIP_DIRECTIVE = re.compile(r"#\s*doctest:[^\n]*\+SKIP")


def _walk() -> list[str]:
    """``mechscope`` and every module below it; a package that fails to import is kept (its test reports it)."""
    broken: list[str] = []
    found = [info.name for info in pkgutil.walk_packages(mechscope.__path__, "mechscope.", onerror=broken.append)]
    return sorted({"mechscope", *found, *broken})


MODULES = _walk()


def _source(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE_DIR / relative / "__init__.py"
    return package if package.is_file() else (PACKAGE_DIR / relative).with_suffix(".py")


@dataclass(frozen=True)
class Outcome:
    attempted: int
    failed: int
    skipped: int
    report: str


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@functools.cache
def _run(name: str) -> Outcome:
    """Import ``name`` and run its doctests (once per session; the public API test reuses the outcome)."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing in OPTIONAL_DEPENDENCIES:
            pytest.skip(f"{name} needs the optional dependency '{missing}', which is not installed")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = io.StringIO()
    attempted = failed = skipped = 0
    for test in finder.find(module, name):
        skipped += sum(bool(example.options.get(doctest.SKIP)) for example in test.examples)
        result = runner.run(test, out=report.write)  # skipped examples count as neither attempted nor failed
        attempted, failed = attempted + result.attempted, failed + result.failed
    return Outcome(attempted, failed, skipped, report.getvalue())


def _examples_in_source(path: Path) -> int:
    """How many doctest examples the docstrings of the file at ``path`` hold (without importing it)."""
    parser = doctest.DocTestParser()
    count = 0
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=True)
            count += len(parser.get_examples(docstring)) if docstring else 0
    return count


def test_every_source_file_is_walked() -> None:
    on_disk = {
        ".".join(("mechscope", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)).removesuffix(".__init__")
        for path in PACKAGE_DIR.rglob("*.py")
    }
    assert on_disk == set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    if name in NOT_IMPORTED:
        assert _examples_in_source(_source(name)) == 0, f"{name} is never imported ({NOT_IMPORTED[name]})"
        return
    outcome = _run(name)
    assert outcome.failed == 0, f"{outcome.failed} of {outcome.attempted} examples failed in {name}:\n{outcome.report}"


def test_skipped_examples_are_allowlisted() -> None:
    found = {}
    for name in MODULES:
        count = len(_SKIP_DIRECTIVE.findall(_source(name).read_text(encoding="utf-8")))
        if count:
            found[name] = count
    assert found == {name: count for name, (count, _reason) in ALLOWED_SKIPS.items()}, (
        "a `+SKIP` example was added or removed; make it run offline, or update ALLOWED_SKIPS with the reason"
    )


@pytest.mark.parametrize("name", PUBLIC_API)
def test_public_api_modules_have_running_examples(name: str) -> None:
    outcome = _run(name)
    assert outcome.attempted > 0 and outcome.skipped == 0, (name, outcome.attempted, outcome.skipped)
    assert outcome.failed == 0, outcome.report


def _returned_classes(module: object) -> set[str]:
    """Names of the classes that the module's public functions return (by their return annotations)."""
    names: set[str] = set()
    for attribute, value in vars(module).items():
        if attribute.startswith("_") or not inspect.isfunction(value):
            continue
        annotation = inspect.signature(value).return_annotation
        names.update(
            re.findall(r"\w+", annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))
        )
    return names


def _needs_own_example(value: object, returned: set[str]) -> bool:
    if inspect.isfunction(inspect.unwrap(value)) if callable(value) else False:
        return True  # a function, also one wrapped by a decorator such as functools.lru_cache
    if not inspect.isclass(value):
        return False
    if issubclass(value, BaseException | enum.Enum) or getattr(value, "_is_protocol", False):
        return False  # raised, enumerated or implemented: nothing to call
    if value.__module__.rsplit(".", 1)[-1].endswith("results"):
        return False  # a result type (the `*results` modules): shown by the functions that return it
    return value.__name__ not in returned  # a class a function returns is shown by that function's example


def _api_reference_modules() -> list[str]:
    """The modules the docs site's API reference renders (``::: module`` lines of ``docs/api/*.md``)."""
    pages = Path(__file__).resolve().parents[1] / "docs" / "api"
    found = (re.findall(r"^::: ([\w.]+)$", page.read_text(encoding="utf-8"), re.M) for page in pages.glob("*.md"))
    return sorted({name for names in found for name in names})


#: Modules whose public functions and classes each need an example: the public API and the API reference's pages.
EXAMPLED = sorted(set(PUBLIC_API) | set(_api_reference_modules()))

#: The package's internal modules, which the API reference leaves out and which need no examples: name or prefix
#: (ending in ".") -> why. docs/guides/python-api.md ("What is public") says the same to users.
INTERNAL: dict[str, str] = {
    "mechscope.cli.": "the command line: documented by `mechscope <command> --help` and docs/guides/cli.md",
    "mechscope.web.": "the web app: its HTTP API is documented by the app's OpenAPI schema and docs/guides/web-app.md",
    "mechscope.viz.": "HTML renderers, reached through each result's `save_html` and the CLI's `--html`",
    "mechscope.zoo.": "training and measuring the bundled organisms (docs/guides/organisms.md)",
    "mechscope.toyworld.": "the organisms' made-up world, read through `concepts.sources` and `probing.dataset`",
    "mechscope.testing.": "tiny random models for the test suite",
    "mechscope.checks.": "`mechscope doctor`, reached through `ms.doctor` and the CLI",
    "mechscope.api.": "the tasks behind the Analyzer's methods, reached through `Analyzer` / `ModelAnalyzer`",
    "mechscope.attention.summary": "the attention overview behind `Analyzer.attention`",
    **dict.fromkeys(
        [f"mechscope.concepts.{name}" for name in ("fit", "interpreter_train", "neutral", "pooling", "templates")],
        "the encyclopedia's plumbing (pooling, templates, neutral texts, fitting, the training loop)",
    ),
    **dict.fromkeys(
        [
            f"mechscope.core.{name}"
            for name in ("batching", "bulk", "capture", "hooks", "intervene", "points", "repeats")
        ],
        "the hook machinery behind `LM.capture`, `LM.intervene` and `LM.forward_batches`",
    ),
    **dict.fromkeys(
        [f"mechscope.models.{name}" for name in ("archmap", "block_weights", "discovery", "param_names")],
        "architecture discovery behind `ms.load` / `ms.wrap` and `LM.arch`",
    ),
    **dict.fromkeys(
        [f"mechscope.probing.{name}" for name in ("analyze", "collect", "generators", "store")],
        "the probe pipeline's shards, stores and generated datasets, behind `probing.battery`",
    ),
    **dict.fromkeys(
        [
            f"mechscope.weights.{name}"
            for name in (
                *("backends", "blocks", "diff_export", "direction_sets", "download", "layer_weights"),
                *("matrix_view", "readout", "run_meta", "schedule", "sources"),
            )
        ],
        "checkpoint backends, scheduling and table plumbing behind `weights.census` / `weights.analyze`",
    ),
    "mechscope.progress": "progress bars of long jobs",
    "mechscope.text": "token text with visible whitespace, for the reports and the CLI",
    "mechscope.errors": "the exceptions, exported by `mechscope` and shown on its page",
}


def _internal_reason(name: str) -> str | None:
    """Why ``name`` is internal, or None when it must be public (in `EXAMPLED`)."""
    if name in NOT_IMPORTED:
        return NOT_IMPORTED[name]
    parent = name.rsplit(".", 1)[0]
    if parent != "mechscope" and parent in EXAMPLED and hasattr(importlib.import_module(parent), "__all__"):
        return f"implements {parent}, whose `__all__` is its public face"
    if name.endswith("results"):
        return "result types, shown by the functions that return them"
    module = importlib.import_module(name)
    if hasattr(module, "__path__") and not any(
        getattr(value, "__module__", None) == name for key, value in vars(module).items() if not key.startswith("_")
    ):
        return "a package that defines nothing of its own"
    for key, why in INTERNAL.items():
        if name == key or (key.endswith(".") and name.startswith(key)):
            return why
    return None


def test_every_module_is_public_or_said_to_be_internal() -> None:
    """A new module either joins the API reference (with examples) or says here why it is internal."""
    unplaced = [name for name in MODULES if name not in EXAMPLED and _internal_reason(name) is None]
    assert not unplaced, f"modules neither in docs/api/ nor in INTERNAL: {unplaced}"
    both = [name for name in EXAMPLED if any(name == key for key in INTERNAL)]
    assert not both, f"modules both public and said to be internal: {both}"


@pytest.mark.parametrize("name", EXAMPLED)
def test_every_public_function_of_the_api_reference_has_an_example(name: str) -> None:
    module = importlib.import_module(name)
    package = hasattr(module, "__path__")
    public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    parser = doctest.DocTestParser()
    lacking = []
    for attribute in public:
        value = getattr(module, attribute)
        home = getattr(value, "__module__", None) or ""
        # a package shows what its subpackages define; a module, what it defines itself (re-exports: where defined)
        if not (home == name or (package and home.startswith(f"{name}."))):
            continue
        returned = _returned_classes(importlib.import_module(home))
        if _needs_own_example(value, returned) and not parser.get_examples(inspect.getdoc(value) or ""):
            lacking.append(attribute)
    assert not lacking, f"{name}: public names whose docstring has no example: {lacking}"
