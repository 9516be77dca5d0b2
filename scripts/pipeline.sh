#!/usr/bin/env bash
# The main job: sets up .venv, then runs notebooks 01 -> 04 headless (see python -m helpers.pipeline --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m helpers.pipeline "$@"
