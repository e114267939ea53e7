#!/usr/bin/env bash
# Every GPU check the project has, in one run: the bench (its GPU section: BN-layer bandwidth
# against a device copy, ResNet-20 and an airbench-style net against PyTorch when torch is
# installed), an LR sweep spread over every GPU vs on one (parallel.runs_devices), and the full
# claims ledger, timed. Usage, on a machine with an NVIDIA GPU:
#
#     bash scripts/gpu_check.sh OUT          # OUT/bench/bench.md, OUT/ledger/report.md, OUT/gpu_check.log
#     ACCEL=cuda13 bash scripts/gpu_check.sh OUT    # CUDA 13 wheels (newer drivers)
#     SKIP_LEDGER=1 bash scripts/gpu_check.sh OUT   # the bench only (a few minutes)
#
# It installs the project with `make install ACCEL=cuda12` (a fresh .venv), fails fast when JAX
# does not see a GPU, and keeps going after a failed step so that what did run comes back.
set -u -o pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUT}
ACCEL=${ACCEL:-cuda12}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) gpu_check into $OUT (ACCEL=$ACCEL)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
make install ACCEL="$ACCEL" || { echo "install failed"; exit 1; }
make data || echo "dataset package not installed: the ledger will say how to get Fashion-MNIST"
.venv/bin/python - <<'EOF' || { echo "JAX sees no GPU: check the driver and ACCEL (cuda12/cuda13)"; exit 1; }
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
assert jax.default_backend() == "gpu"
EOF
.venv/bin/python -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" \
  || echo "no torch: the bench's PyTorch comparisons are skipped (pip install torch to run them)"

rc=0
start=$(date +%s)
.venv/bin/bn bench --out "$OUT/bench" || rc=1
echo "== bench: $(( $(date +%s) - start )) s (rc so far $rc)"
# runs spread over every GPU (parallel.runs_devices=all; the default is 1 off CPU): the quick ledger's
# lr_sweep (10 seeds x 7 learning rates per condition) on one GPU and on all of them, same numbers
ngpu=$(.venv/bin/python -c "import jax; print(jax.device_count())")
if [ "$ngpu" -gt 1 ]; then
  for r in 1 all; do
    start=$(date +%s)
    .venv/bin/bn train --config experiments/configs/lr_sweep.py:quick --workdir "$OUT/runs_devices_$r" --no-progress \
      --config.parallel.runs_devices=$r || rc=1
    echo "== lr_sweep quick, runs_devices=$r of $ngpu GPUs: $(( $(date +%s) - start )) s (rc so far $rc)"
  done
else
  echo "== one GPU: no runs-over-GPUs case"
fi
if [ -z "${SKIP_LEDGER:-}" ]; then
  start=$(date +%s)
  .venv/bin/bn reproduce --full --out "$OUT/ledger" || rc=1
  echo "== full ledger: $(( $(date +%s) - start )) s (rc so far $rc; per-experiment times in $OUT/ledger/timings.json)"
fi
exit $rc
