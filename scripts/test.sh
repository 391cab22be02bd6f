#!/usr/bin/env bash
# The project's gates: lint, format check, strict types, the test suite (tutorials included), the docs site.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
bash scripts/docs.sh
