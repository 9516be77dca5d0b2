#!/usr/bin/env bash
# Precision on CPUs without native bf16, measured on one that has it: oneDNN and ATen are held
# to older instruction sets by environment variables, as on a typical laptop (AVX2) or an
# AVX-512 server without bf16. One JSON line per (instruction set, precision), "isa" added.
#
#   bash scripts/bench_precision.sh DATA_DIR [benchmark flags]   # default: --recipe fast --epochs 1 --limit 10000
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${1:-}" ] || { echo "usage: bash scripts/bench_precision.sh DATA_DIR [benchmark flags]" >&2; exit 2; }
data_dir=$1; shift
flags=("$@"); [ ${#flags[@]} -gt 0 ] || flags=(--recipe fast --epochs 1 --limit 10000)
PY=${PYTHON:-.venv/bin/python}
declare -A ISA=(
  [native]=""
  [avx512_core]="ONEDNN_MAX_CPU_ISA=AVX512_CORE"
  [avx2]="ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
)
for isa in native avx512_core avx2; do
  for precision in bf16 fp32 auto; do
    line=$(env ${ISA[$isa]} "$PY" -m helpers.benchmark --data-dir "$data_dir" --precision "$precision" "${flags[@]}" 2>/dev/null)
    echo "{\"isa\": \"$isa\", \"asked\": \"$precision\", ${line#\{}"
  done
done
