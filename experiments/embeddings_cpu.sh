#!/usr/bin/env bash
# The paper's Section 8 and Appendix K on 2 CPU cores:
#  - a small CNN trained 2 epochs on FashionMNIST labels (flowood embed --train-classifier), then MAF and
#    RealNVPTabular flows on its 64-dim features, evaluated against MNIST, scikit-learn digits and noise;
#  - tabular flows trained on one class of scikit-learn's breast-cancer and wine tables, the other class as OOD.
# Usage: bash experiments/embeddings_cpu.sh [OUT]   (about 8 minutes; outputs under OUT, default runs/embeddings)
set -euo pipefail
OUT=${1:-runs/embeddings}
FLOWOOD=${FLOWOOD:-.venv/bin/flowood}
if [ ! -f "$OUT/fm.npz" ]; then
  $FLOWOOD embed --backbone smallcnn --dataset fashionmnist --train-classifier --epochs 2 --embedding-dim 64 \
      --ood mnist digits noise --out "$OUT/fm.npz" --overwrite --no_progress
fi
for flow in MAF RealNVPTabular; do
  $FLOWOOD train --dataset "npz:$OUT/fm.npz" --flow $flow --num_coupling_layers 5 --num_hidden_units 256 \
      --batch_size 256 --lr 1e-3 --num_epochs 10 --out "$OUT/flow_$flow" --overwrite --no_progress
  $FLOWOOD evaluate --checkpoint "$OUT/flow_$flow/checkpoints/last.ckpt" \
      --ood "npz:$OUT/fm-mnist.npz" "npz:$OUT/fm-digits.npz" "npz:$OUT/fm-noise.npz" --out "$OUT/eval_$flow" --no_progress
done
# IN_SET STEPS OOD_SETS...: wine's classes have ~45 training samples, so fewer steps (more overfit, see README)
for job in "breastcancer1 400 breastcancer0" "wine0 100 wine1 wine2"; do
  set -- $job
  for flow in MAF RealNVPTabular; do
    $FLOWOOD train --dataset $1 --flow $flow --num_coupling_layers 4 --num_hidden_units 64 --batch_size 32 \
        --lr 1e-3 --num_epochs 1000 --max_steps $2 --out "$OUT/$1_$flow" --overwrite --no_progress
    $FLOWOOD evaluate --checkpoint "$OUT/$1_$flow/checkpoints/last.ckpt" --ood "${@:3}" --scores likelihood \
        --out "$OUT/$1_${flow}_eval" --no_progress
  done
done
