#!/usr/bin/env bash
# The paper's Section 6 on 2 CPU cores: baseline (the shipped demo config), cycle mask and bottleneck st-networks,
# each trained 5 minutes on FashionMNIST, then evaluated against MNIST and inspected.
# Usage: bash experiments/inductive_bias_cpu.sh [OUT]   (about 25 minutes; outputs under OUT, default runs/inductive_bias)
set -euo pipefail
OUT=${1:-runs/inductive_bias}
FLOWOOD=${FLOWOOD:-.venv/bin/flowood}
for name in demo cycle_mask_demo bottleneck_demo; do
  if [ ! -f "$OUT/$name/train/checkpoints/last.ckpt" ]; then
    $FLOWOOD train --config $name --out "$OUT/$name/train" --overwrite --no_progress
  fi
  $FLOWOOD evaluate --checkpoint "$OUT/$name/train/checkpoints/last.ckpt" --ood mnist digits noise constant \
      --scores likelihood --out "$OUT/$name/eval" --no_progress
  $FLOWOOD inspect --checkpoint "$OUT/$name/train/checkpoints/last.ckpt" --images fashionmnist:test:0-63 \
      --images mnist:test:0-1995 --complexity-samples 500 --out "$OUT/$name/inspect" --no_progress
done
