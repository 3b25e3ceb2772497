#!/bin/bash
# One device call: the fused kernels' GPU check, then a profiler trace of the XLA and the fused
# (Pallas) path of the growing, diffusing, scaled and rollout-256 cases, summarised by kernel.
# Needs the wheels in .whl/ (experiments/gpu/README.md), git-ignored: call the device with carry
# [".whl"]. Writes under $OUT.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
timeout 90 python3 experiments/gpu/fused_check.py 2>&1 | tee $OUT/fused_check.txt
for args in "--suite growing" "--suite diffusing" "--suite scaled" "--suite rollout --case 1"; do
  timeout 60 python3 experiments/gpu/profile.py $args --out /tmp/traces 2>&1 | tee -a $OUT/profile.txt
done
tar -C /tmp/traces -cf $OUT/traces.tar .
