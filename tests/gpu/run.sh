#!/usr/bin/env bash
# The whole GPU check in one command (a few minutes on one H100/H200):
#   tests/gpu/run.sh OUTDIR
# runs the `gpu`-marked tests, then both kernel benchmark configs on CUDA, and writes
# OUTDIR/{gpu-tests.log,gpu-tests.xml,bench-criteo.json,bench-multihot.json,*.log,nvidia-smi.txt}.
set -uo pipefail
OUT=${1:?usage: tests/gpu/run.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "tests/gpu/run.sh: no CUDA device visible to torch" >&2; exit 2; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
status=0
python3 -m pytest -q -m gpu tests/gpu --timeout=600 --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
for c in criteo multihot; do
  python3 -m widedeep bench kernel --device cuda --config "$c" --json "$OUT/bench-$c.json" 2>&1 | tee "$OUT/bench-$c.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
echo "tests/gpu/run.sh: done (status $status); results in $OUT"
exit $status
