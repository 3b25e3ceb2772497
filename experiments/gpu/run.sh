#!/bin/bash
# One device call: the fused Pallas kernels' GPU check (forward and backward against XLA), the
# harness (both of nca_lab's kernels against one CAX run per case), the harness again with XLA's
# while loops in command buffers and with two CA steps per loop iteration, the launch sweep,
# then the cost of a drawn rollout length. Most wanted first: a part cut short by the device
# call's limit loses only what follows it. (profile.sh profiles the cases, in a call of its own.)
# Needs the wheels in .whl/ (experiments/gpu/README.md), git-ignored: call the device with carry
# [".whl"] and timeout_s 600. Writes 8 files under $OUT (the most a device call brings back).
# About 9.5 minutes; each part's timeout ends it with SIGTERM, then SIGKILL 10 s later.
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:3])) < (0, 12, 6))"; then
  echo "flax too old: installing the carried 0.12.8"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/fallback/*.whl
fi
SUITES="growing diffusing scaled rollout"
timeout -k 10 75 python3 experiments/gpu/fused_check.py 2>&1 | tee $OUT/fused_check.txt
timeout -k 10 200 python3 -m nca_lab.bench --suite $SUITES --peer cax --kernel xla pallas --max-seconds 8 --json $OUT/gpu.json 2>&1 | tee $OUT/bench.txt
# XLA runs a while loop's iterations from the host unless WHILE is among its command-buffer
# types (not by default): then the whole loop is one CUDA graph (experiments/gpu/README.md).
XLA_FLAGS="--xla_gpu_enable_command_buffer=+WHILE" timeout -k 10 75 python3 -m nca_lab.bench --suite growing diffusing rollout \
  --kernel xla pallas --max-seconds 4 --json $OUT/gpu_while.json 2>&1 | tee $OUT/bench_while.txt
# Two CA steps per iteration: the loop bodies hold 5 thunks or more, and XLA records them as one
# CUDA graph with any driver (aot_2026-12-01.md); one graph launch per iteration.
timeout -k 10 60 python3 -m nca_lab.bench --suite growing rollout --kernel pallas --unroll 2 --max-seconds 4 \
  --json $OUT/gpu_unroll2.json 2>&1 | tee $OUT/bench_unroll2.txt
timeout -k 10 110 python3 experiments/gpu/sweep.py --sizes growing diffusing --steps 16 2>&1 | tee $OUT/sweep.txt
timeout -k 10 50 python3 experiments/gpu/drawn_length.py --repeats 10 2>&1 | tee -a $OUT/sweep.txt
