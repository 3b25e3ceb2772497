#!/usr/bin/env bash
# Perceive ablation (sobel vs learned vs attention) on growing and denoising, 3 seeds each.
# Reproduce from the repo root: bash experiments/perceive_ablation/run.sh
# Re-running skips finished jobs and resumes interrupted ones.
set -euo pipefail
for task in growing diffusing; do
  python -m nca_lab -m experiment=ablation_${task} perceive=sobel,learned,attention seed=0,1,2 \
    logger=none trainer.progress=false hydra.sweep.dir=outputs/sweeps/ablation_${task}
done
python experiments/perceive_ablation/aggregate.py outputs/sweeps/ablation_growing outputs/sweeps/ablation_diffusing \
  --out experiments/perceive_ablation
