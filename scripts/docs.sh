#!/usr/bin/env bash
# Build the docs site offline into build/site: the guides (docs/guides), the tutorials rendered with their
# outputs, and the API reference from the docstrings. Fails on a broken link or a public name without a
# docstring (mkdocs --strict; tests/test_docs.py checks the docstrings too).
#
# The tutorials' outputs come from build/notebooks, written by tests/test_notebooks.py when it executes them;
# notebooks with no executed copy there (or an older one) are executed first.
set -euo pipefail
cd "$(dirname "$0")/.."
stale=()
for notebook in examples/*.ipynb; do
  executed="build/notebooks/$(basename "$notebook")"
  [ -f "$executed" ] && [ "$executed" -nt "$notebook" ] || stale+=("$(basename "$notebook" .ipynb)")
done
if [ ${#stale[@]} -gt 0 ]; then
  echo "docs: executing ${stale[*]}"
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_notebooks.py -m notebook \
    -k "$(IFS='|'; echo "${stale[*]}" | sed 's/|/ or /g')"
fi
rm -rf docs/tutorials && mkdir -p docs/tutorials
cp build/notebooks/*.ipynb docs/tutorials/
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
# An API page whose module the docs' parser cannot read (e.g. names exported lazily, without TYPE_CHECKING
# imports) builds without error but empty: refuse that.
empty=()
for page in build/site/api/*/index.html; do
  grep -q 'doc-heading' "$page" || empty+=("$(basename "$(dirname "$page")")")
done
if [ ${#empty[@]} -gt 0 ]; then
  echo "docs: API pages with no documented member: ${empty[*]}" >&2
  exit 1
fi
echo "docs: built build/site/index.html"
