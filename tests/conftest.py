"""Shared fixtures: tiny random-init models of every supported family, saved and loaded back.

Models are built once per test session into a temporary folder and loaded through `mechscope.load`,
i.e. through transformers' real ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import mechscope as ms
from mechscope.testing.tiny_models import FAMILIES, build_tiny_model

DECODERS = tuple(f for f in FAMILIES if f != "bert")
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "granitemoe")
PROMPTS = ["The capital of France is", "Two plus two is four, and the cat"]
#: A small corpus of mixed lengths (one very short prompt) for the corpus analyses.
MOE_CORPUS = [
    *PROMPTS,
    "Rain",
    "The weather is cold and windy in the winter, and snow fell on the hills.",
    "A dog likes to run",
    "The train to London leaves at 9:30 from platform 4.",
]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch and one BLAS/LAPACK thread for a module's tests (``pytest.mark.usefixtures("one_thread")``).

    On a busy shared machine, threads spinning while they wait for cores make small forward passes, SVDs and
    solvers many times slower (measured: numpy's reference ranks 80 s instead of under 1 s; one routing probe
    11 s instead of 0.4 s).
    """
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_dir(family)`` → the folder of that family's tiny model (built on first use)."""
    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def load_tiny(tiny_dir: Callable[[str], Path]) -> Callable[..., ms.LanguageModel]:
    """``load_tiny(family, attn_implementation=None)`` → a cached `LanguageModel`."""
    loaded: dict[tuple[str, str | None], ms.LanguageModel] = {}

    def get(family: str, attn_implementation: str | None = None) -> ms.LanguageModel:
        key = (family, attn_implementation)
        if key not in loaded:
            loaded[key] = ms.load(tiny_dir(family), attn_implementation=attn_implementation)
        return loaded[key]

    return get


@pytest.fixture(scope="session")
def toy_ui() -> Iterator[Any]:
    """``mechscope ui -m toy`` on a free port, shared by the web app's server and browser tests."""
    from tests.server import running

    with running("-m", "toy", "--port", "0") as server:
        yield server


@pytest.fixture(scope="session")
def public_toy_ui() -> Iterator[Any]:
    """``mechscope ui -m toy --host 0.0.0.0 --public``: a server that requires its printed token."""
    from tests.server import running

    with running("-m", "toy", "--host", "0.0.0.0", "--port", "0", "--public") as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's headless chromium driven by Playwright, one for the session (its own download is not used)."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it with apt-get)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()
