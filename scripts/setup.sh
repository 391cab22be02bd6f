#!/usr/bin/env bash
# Set up mechscope in ./.venv: PyTorch, the package (editable) and its dev tools.
#
# PyTorch comes first so that pip never resolves it on its own: where pip's find-links offer a local
# CPU wheel (as on our build machines) that wheel is installed; elsewhere pip picks the torch build
# for your platform as usual. Nothing pins a torch version for users.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages some features need: chromium (the HTML reports' browser tests), graphviz (DOT rendering),
# wordnet-base (WordNet 3.0 for `mechscope concepts list --source wordnet`, read offline by nltk).
APT_PACKAGES=(chromium graphviz wordnet-base)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "setup: could not install ${missing[*]}; the tests that need them will be skipped"
  else
    echo "setup: not root or no apt-get: skipping ${missing[*]} (the tests that need them will be skipped)"
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VENV_PIP=(.venv/bin/python -m pip --quiet)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  wheel=""
  for dir in ${PIP_FIND_LINKS:-} $(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true); do
    [ -d "$dir" ] || continue
    found=$(ls "$dir"/torch-*+cpu-cp3*-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$found" ] && wheel=$found && break
  done
  if [ -n "$wheel" ]; then
    echo "setup: installing the local CPU build of PyTorch: $(basename "$wheel")"
    "${VENV_PIP[@]}" install "$wheel"
  else
    echo "setup: installing PyTorch for this platform"
    "${VENV_PIP[@]}" install torch
  fi
fi

"${VENV_PIP[@]}" install -e ".[dev]"
echo "setup: done ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
