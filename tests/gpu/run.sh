#!/usr/bin/env bash
# The whole GPU check in one command (a few minutes on one H100/H200):
#   tests/gpu/run.sh OUTDIR
# runs the `gpu`-marked tests, then both kernel benchmark configs on CUDA, then the row-wise
# sharded tables' exactness tests and benchmark (nccl: one GPU per process; on fewer GPUs than
# processes, gloo over CUDA tensors), and writes OUTDIR/{gpu-tests.log,gpu-tests.xml,
# shard-tests.log,shard-tests.xml,bench-criteo.json,bench-multihot.json,bench-shard.json,
# bench-train-{fp32,bf16}-{8192,65536}.json,*.log,nvidia-smi.txt}.
# The training bench (issue 12 item 7): the Criteo-shaped W&D step (our Triton tables in fp32 and
# bf16 weights) vs the fair sparse baseline and dense Adam, on CUDA, at batch 8192 and 65536,
# printing samples/s; the 2M-row data set is generated once into OUTDIR/bench-train-data.
set -uo pipefail
OUT=${1:?usage: tests/gpu/run.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "tests/gpu/run.sh: no CUDA device visible to torch" >&2; exit 2; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
status=0
python3 -m pytest -q -m "gpu and not shard" tests/gpu --timeout=600 --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
for c in criteo multihot; do
  python3 -m widedeep bench kernel --device cuda --config "$c" --json "$OUT/bench-$c.json" 2>&1 | tee "$OUT/bench-$c.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
# row-wise sharded tables (issue 16): 2 and 4 processes, nccl where there is a GPU per process
python3 -m pytest -q -m "gpu and shard" tests/gpu --timeout=600 --junitxml "$OUT/shard-tests.xml" 2>&1 | tee "$OUT/shard-tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$ngpu" -ge 4 ]; then shard_dist="--backend nccl --worlds 2,4"
elif [ "$ngpu" -ge 2 ]; then shard_dist="--backend nccl --worlds 2"
else shard_dist="--backend gloo --worlds 2,4"; fi
# Criteo cardinalities / 4 (the largest table 164 MiB > the 160 MiB budget), 4096 bags of 20 ids per table
python3 -m widedeep bench shard --device cuda $shard_dist --scale 4 --batch 4096 --budget-mb 160 \
  --json "$OUT/bench-shard.json" 2>&1 | tee "$OUT/bench-shard.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# W&D training step on CUDA (issue 12 item 7): our tables fp32 and bf16, batch 8192 and 65536
for dt in fp32 bf16; do
  for b in 8192 65536; do
    python3 -m widedeep bench train --device cuda --embedding-dtype "$dt" --batch-size "$b" --rows 2000000 \
      --no-adult --no-pipeline --threads 4 --workdir "$OUT/bench-train-data" --json "$OUT/bench-train-$dt-$b.json" \
      2>&1 | tee "$OUT/bench-train-$dt-$b.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  done
done
echo "tests/gpu/run.sh: done (status $status); results in $OUT"
exit $status
