#!/usr/bin/env bash
# The prepared GPU check: run it in one go on any CUDA machine (about 5 minutes on one modern GPU).
#   1. the tests that need CUDA (tests/test_device.py, the ones a CPU machine skips): auto precision and
#      compile, the fp16 GradScaler state, a resume that crosses precisions (a Colab reconnect);
#   2. the benchmark, precision auto: `fast` for 3 seeds, `best` for 1; one JSON line each, with the
#      GPU's own peak memory (peak_device_mb) and the warm-up done before the clock (warmup_seconds):
#      seed 0's train_seconds should now be level with seeds 1 and 2 (docs/devices.md, the first GPU run);
#   3. torch.compile off and on for both, timed with the compile included (train_plus_compile_seconds):
#      the numbers that decide compile="auto" (helpers/device.py, COMPILE_MIN_STEPS).
#
#   bash scripts/gpu_check.sh                      # CIFAR-10, downloaded by torchvision
#   bash scripts/gpu_check.sh DATA_DIR             # an ImageFolder root with train/ and test/
#
# Where torch is already installed (Colab, a GPU image) it adds only this project and pytest, with
# floors that the installed torch, torchvision and matplotlib meet (offline, it runs from the checkout);
# anywhere else it sets up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if "$PY" -c "import torch" 2>/dev/null; then
  if ! "$PY" -m pip install -q -e . "pytest>=7"; then
    # a GPU image with torch and pytest but no package index (an offline lab machine): run from the checkout
    echo "gpu_check: pip could not install this project (no package index?); running it from the checkout"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible to torch; run this on a GPU machine (Colab: Runtime > Change runtime type > GPU)")
print(f"gpu_check: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
      f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}", flush=True)
PYEOF
data=(--data cifar10)
if [ -n "${1:-}" ]; then data=(--data folder --data-dir "$1"); fi
echo "gpu_check: tests that need CUDA"
"$PY" -m pytest -q -p no:cacheprovider tests/test_device.py -k "cuda"
echo "gpu_check: benchmark, precision and compile auto (JSON lines on stdout)"
timeout 240 "$PY" -m helpers.benchmark "${data[@]}" --recipe fast --seeds 3
timeout 240 "$PY" -m helpers.benchmark "${data[@]}" --recipe best
echo "gpu_check: the compile pair (auto leaves fast and best uncompiled: is the sum lower compiled?)"
timeout 300 "$PY" -m helpers.benchmark "${data[@]}" --recipe fast --compile default
timeout 300 "$PY" -m helpers.benchmark "${data[@]}" --recipe best --compile default
