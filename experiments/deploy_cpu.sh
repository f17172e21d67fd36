#!/usr/bin/env bash
# Choosing and deploying a detector on 2 CPU cores, the way a practitioner would (docs/results/deploy.md):
#  - a small CNN trained 2 epochs on FashionMNIST's labels (flowood embed --train_classifier), and the demo's pixel
#    RealNVP (flowood train --config demo, 5 minutes);
#  - flowood detector select: every classifier-based detector, a flow on the classifier's features and the pixel
#    flow's scores, fitted on the same 10,000 training images, ranked on MNIST (the validation OOD set);
#  - flowood evaluate --detector: the chosen detector on the test OOD sets (digits, noise, constant), and on MNIST's
#    test split (the validation set, for comparison: flowood warns that those numbers are optimistic).
# Usage: bash experiments/deploy_cpu.sh [OUT]   (about 20 minutes; outputs under OUT, default runs/deploy)
set -euo pipefail
OUT=${1:-runs/deploy}
FLOWOOD=${FLOWOOD:-.venv/bin/flowood}
$FLOWOOD data fetch fashionmnist mnist
if [ ! -f "$OUT/emb/fm.classifier.pt" ]; then
  $FLOWOOD embed --backbone smallcnn --dataset fashionmnist --train_classifier --epochs 2 --embedding_dim 64 \
      --out "$OUT/emb/fm.npz" --overwrite --no_progress
fi
if [ ! -f "$OUT/pixel/checkpoints/last.ckpt" ]; then
  $FLOWOOD train --config demo --out "$OUT/pixel" --overwrite --no_progress
fi
$FLOWOOD detector select --classifier "$OUT/emb/fm.classifier.pt" --checkpoint "$OUT/pixel/checkpoints/last.ckpt" \
    --dataset fashionmnist --ood mnist --fit_samples 10000 --fpr 0.05 --bootstrap 1000 \
    --flow_out "$OUT/feature_flow" --out "$OUT/detector.pt" --overwrite --no_progress
$FLOWOOD detector info "$OUT/detector.pt"
$FLOWOOD evaluate --detector "$OUT/detector.pt" --ood digits noise constant mnist --bootstrap 1000 \
    --out "$OUT/eval" --overwrite --no_progress
# The runner-up and the flow on the features, fitted on the same 10,000 images, on the same test sets, and exported
# (the chosen pixel:complexity needs a PNG encoder, which no graph holds: it scores on an engine with --backend)
$FLOWOOD detector fit --classifier "$OUT/emb/fm.classifier.pt" --dataset fashionmnist --method mahalanobis \
    --fit_samples 10000 --out "$OUT/mahalanobis.pt" --overwrite --no_progress
$FLOWOOD detector fit --classifier "$OUT/emb/fm.classifier.pt" --dataset fashionmnist --method flow \
    --checkpoint "$OUT/feature_flow/train/checkpoints/last.ckpt" --fit_samples 10000 --out "$OUT/flow.pt" \
    --overwrite --no_progress
for d in mahalanobis flow; do
  $FLOWOOD evaluate --detector "$OUT/$d.pt" --ood digits noise constant mnist --bootstrap 1000 \
      --out "$OUT/eval_$d" --overwrite --no_progress
  $FLOWOOD export --detector "$OUT/$d.pt" --format openvino --out "$OUT/export_$d" --overwrite --no_progress
done
