"""The docs site's sources hang together (issue 24): every guide and tutorial is reachable, every name the
API reference shows has a docstring (and so does every public function and class of the package), and the
README links only to files that exist.

``scripts/docs.sh`` builds the site with ``mkdocs build --strict`` (broken links fail it); these checks run
without mkdocs, so that the quick suite catches the same mistakes.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_files() -> list[str]:
    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may hold python-name tags (none today); ignore any tag rather than fail on it
    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    found: list[str] = []

    def walk(entry: object) -> None:
        if isinstance(entry, str):
            found.append(entry)
        elif isinstance(entry, list):
            for item in entry:
                walk(item)
        elif isinstance(entry, dict):
            for value in entry.values():
                walk(value)

    walk(config["nav"])
    return found


def _api_modules() -> list[str]:
    return sorted(
        match.group(1)
        for page in (DOCS / "api").glob("*.md")
        for match in re.finditer(r"^::: ([\w.]+)$", page.read_text(encoding="utf-8"), re.M)
    )


def test_every_guide_and_tutorial_is_in_the_nav() -> None:
    nav = set(_nav_files())
    guides = {f"guides/{path.name}" for path in (DOCS / "guides").glob("*.md")}
    api = {f"api/{path.name}" for path in (DOCS / "api").glob("*.md")}
    tutorials = {f"tutorials/{path.name}" for path in (ROOT / "examples").glob("*.ipynb")}
    assert guides and tutorials
    assert guides | api | tutorials | {"index.md"} == nav, (
        "mkdocs.yml's nav and the files in docs/ and examples/ differ"
    )


def test_the_readme_links_to_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)\)", readme)
    local = [target for target in targets if "://" not in target]
    assert local, "the README links to no guide"
    missing = [target for target in local if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"
    for path in (ROOT / "examples").glob("*.ipynb"):
        assert f"examples/{path.name}" in readme, f"the README does not link the tutorial {path.name}"


def _all_modules() -> list[str]:
    import pkgutil

    import mechscope

    found = {info.name for info in pkgutil.walk_packages(mechscope.__path__, "mechscope.")}
    return sorted(found - {"mechscope.__main__"})  # importing __main__ runs the command line


def _undocumented(module: object, defined_in: str | None) -> list[str]:
    """Public functions, classes and their methods without a docstring (only those ``defined_in`` that module)."""
    public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    missing = []
    for attribute in public:
        value = getattr(module, attribute)
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        home = getattr(value, "__module__", "")
        if home.split(".")[0] != "mechscope" or (defined_in is not None and home != defined_in):
            continue
        if not inspect.getdoc(value):
            missing.append(attribute)
        if inspect.isclass(value):
            missing += [
                f"{attribute}.{method_name}"
                for method_name, method in vars(value).items()
                if not method_name.startswith("_") and inspect.isfunction(method) and not inspect.getdoc(method)
            ]
    return missing


@pytest.mark.parametrize("name", _all_modules())
def test_every_public_function_and_class_of_the_package_has_a_docstring(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:  # an optional extra that is not installed
        pytest.skip(f"{name} needs '{error.name}', which is not installed")
    missing = _undocumented(module, defined_in=name)
    assert not missing, f"{name}: public names without a docstring: {missing}"


@pytest.mark.parametrize("name", _api_modules())
def test_every_public_name_in_the_api_reference_has_a_docstring(name: str) -> None:
    # a page shows what its module re-exports too (a package's names live in its submodules)
    undocumented = _undocumented(importlib.import_module(name), defined_in=None)
    assert not undocumented, f"{name}: public names without a docstring: {undocumented}"


@pytest.mark.parametrize(("package", "table"), [("mechscope", "_LAZY"), ("mechscope.steering", "_NAMES")])
def test_lazily_exported_names_are_declared_for_the_docs_and_type_checkers(package: str, table: str) -> None:
    """A lazy name must be in ``__all__`` and imported under ``TYPE_CHECKING``: the docs' parser and mypy only
    see that (without it the API page builds empty, as `mechscope.steering`'s once did)."""
    import ast

    module = importlib.import_module(package)
    lazy = set(getattr(module, table))
    assert lazy <= set(module.__all__)
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    checked = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert lazy <= checked, f"{package}: lazy names missing from the TYPE_CHECKING imports: {sorted(lazy - checked)}"
    for name in sorted(lazy):
        assert getattr(module, name) is not None


def test_an_exported_function_is_not_shadowed_by_its_submodule() -> None:
    """Importing ``pkg.name`` binds ``pkg.name`` to that submodule; a package exporting a function of the same name
    lazily would then hand out the module (``ms.steering.search`` once did, after the CLI imported it)."""
    import pkgutil
    import types

    import mechscope

    meant_as_modules = {"mechscope": {"moe", "ops", "sae", "steering"}}
    for info in pkgutil.walk_packages(mechscope.__path__, "mechscope."):
        if info.name != "mechscope.__main__":  # importing that runs the command line
            importlib.import_module(info.name)  # every submodule imported first, as a long session would
    packages = [mechscope] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(mechscope.__path__, "mechscope.")
        if info.ispkg
    ]
    for package in packages:
        allowed = meant_as_modules.get(package.__name__, set())
        shadowed = [
            name
            for name in getattr(package, "__all__", [])
            if name not in allowed and isinstance(getattr(package, name), types.ModuleType)
        ]
        assert not shadowed, f"{package.__name__}: exported names that resolve to a submodule: {shadowed}"
