#!/usr/bin/env bash
# Creates .venv (once) and installs the project's requirements into it.
# On this project's machines torch 2.14.1 / torchvision 0.29.1 lie on local disk:
# .ci/constraints.txt pins them so pip takes those builds instead of downloading others.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt .ci/constraints.txt | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements (first time: a few minutes)"
  .venv/bin/python -m pip install -q -r requirements.txt -c .ci/constraints.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import torch, torchvision" || { echo "setup: torch failed to install" >&2; exit 1; }
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
