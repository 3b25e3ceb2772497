#!/bin/bash
# One device call: the fused Pallas step's GPU check (forward and backward kernels against XLA),
# a variant sweep (XLA vs Pallas train step and rollouts), then the bench with CAX (nca_lab's
# defaults). Needs the wheels in .whl/ (experiments/gpu/README.md); writes under $OUT.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:3])) < (0, 12, 6))"; then
  echo "flax too old: installing the carried 0.12.8"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/fallback/*.whl
fi
timeout 60 python3 experiments/gpu/fused_check.py 2>&1 | tee $OUT/fused_check.txt
timeout 100 python3 experiments/gpu/sweep.py 2>&1 | tee $OUT/sweep.txt
timeout 220 python3 -m nca_lab.bench --peer cax --max-seconds 20 --json $OUT/gpu.json 2>&1 | tee $OUT/bench.txt
