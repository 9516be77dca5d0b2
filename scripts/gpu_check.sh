#!/usr/bin/env bash
# The prepared GPU check: run it in one go on any CUDA machine (about 5 minutes on one modern GPU).
#   1. the tests that need CUDA (tests/test_device.py, the ones a CPU machine skips);
#   2. the benchmark, auto precision: `fast` for 3 seeds, `best` and `long` for 1; one JSON line each.
#
#   bash scripts/gpu_check.sh                      # CIFAR-10, downloaded by torchvision
#   bash scripts/gpu_check.sh DATA_DIR             # an ImageFolder root with train/ and test/
#
# Uses the python that already has torch (Colab, a GPU image), else sets up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, tqdm, pytest" 2>/dev/null; then
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
echo "gpu_check: benchmark (JSON lines on stdout)"
timeout 240 "$PY" -m helpers.benchmark "${data[@]}" --recipe fast --seeds 3
timeout 240 "$PY" -m helpers.benchmark "${data[@]}" --recipe best
timeout 300 "$PY" -m helpers.benchmark "${data[@]}" --recipe long --target 0.89
