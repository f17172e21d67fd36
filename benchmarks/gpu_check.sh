#!/usr/bin/env bash
# The GPU check in one script, for a machine with one or more CUDA GPUs; everything it writes goes to $OUT.
#
#   OUT=/path/to/results FLOWOOD_DATA=/path/to/data bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run                                                  # anywhere: every step
#                                                                                           # tiny, on the CPU
#
# Steps (each bounded by `timeout`, so the whole stays under 9 minutes on one H100):
#   1. tests/test_cuda.py (CUDA log-likelihoods against the CPU, training through Lightning, mixed precision);
#   2. benchmarks/compare.py's GPU rows on Glow 1x28x28: flowood fp32, channels-last, bf16 and torch.compile
#      against normflows (fp32 and bf16);
#   3. the paper-scale RealNVP on FashionMNIST (14,707,336 parameters, the paper's hyper-parameters: Adam at 5e-5,
#      batches of 32, weight decay 5e-5, clipping at 100) trained for 5 minutes, then its test bits/dim and the
#      likelihood's AUROC against MNIST;
#   4. DDP over every GPU present (the demo's RealNVP, 100 steps).
# It ends with $OUT/summary.txt: one line per step with its exit status and the numbers.
#
# The data (FashionMNIST and MNIST) must be under $FLOWOOD_DATA (or ~/.cache/flowood): a GPU machine that cannot
# download reads the files carried to it. The dry run trains and evaluates on the committed fixtures instead, with
# 2 steps of everything (compare.py's fp32 rows only), and checks that every command line is accepted and writes
# what the summary reads.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FLOWOOD=("$PY" -m flowood.cli.main)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

if [[ $DRY == 1 ]]; then
  DEVICE=cpu; GPUS=1; IND="npz:$ROOT/tests/fixtures/fashionmnist-small.npz"; OOD="npz:$ROOT/tests/fixtures/mnist-small.npz"
  TRAIN_LIMIT=(--max_steps 2 --max_train_samples 64 --max_test_samples 16 --batch_size 8)
  EVAL_SAMPLES=16; COMPARE_STEPS=1; DDP_STEPS=2; LIMITS=(120 240 300 120 120)
  # the fp32 rows only: on a CPU without native BF16, the bf16 rows (emulated) and the compile row (compilation)
  # take 5 minutes more; compare.py is the same program with every row (its rows are checked in the test suite)
  COMPARE_ROWS=(flowood-cl+malloc normflows+malloc)
else
  DEVICE=cuda; IND=fashionmnist; OOD=mnist
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [[ "$GPUS" -lt 1 ]]; then echo "no CUDA GPU on this machine; run with --dry-run to check the script" >&2; exit 2; fi
  TRAIN_LIMIT=(--max_minutes 5 --max_test_samples 2000)
  EVAL_SAMPLES=2000; COMPARE_STEPS=20; DDP_STEPS=100; LIMITS=(60 75 345 45 50)
  COMPARE_ROWS=(flowood-cl+malloc flowood-cl-bf16+malloc flowood-compile+malloc normflows+malloc normflows-bf16+malloc)
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s$([[ $rc == 124 ]] && echo ' (time limit)')" | tee -a "$SUMMARY"
  return 0
}

{
  echo "gpu check $(date -u '+%Y-%m-%d %H:%M UTC'), dry run: $DRY, device: $DEVICE, GPUs: $GPUS"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee -a "$SUMMARY"

step test_cuda "${LIMITS[0]}" "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider
step compare "${LIMITS[1]}" "$PY" benchmarks/compare.py --device "$DEVICE" --cases glow-1x28x28 --steps "$COMPARE_STEPS" \
  --rows "${COMPARE_ROWS[@]}" --json "$OUT/compare.json"
step train_paper_realnvp "${LIMITS[2]}" "${FLOWOOD[@]}" train --config realnvp_fashionmnist --dataset "$IND" \
  --device "$DEVICE" --out "$OUT/realnvp" "${TRAIN_LIMIT[@]}" --loggers csv --samples_every_n_epochs 0 --no_progress
step evaluate_paper_realnvp "${LIMITS[3]}" "${FLOWOOD[@]}" evaluate --checkpoint "$OUT/realnvp/checkpoints/last.ckpt" \
  --ood "$OOD" --scores likelihood --max_samples "$EVAL_SAMPLES" --device "$DEVICE" --out "$OUT/realnvp-eval" \
  --no_progress
step ddp "${LIMITS[4]}" "${FLOWOOD[@]}" train --config demo --dataset "$IND" --device "$DEVICE" --devices "$GPUS" \
  --strategy ddp --max_steps "$DDP_STEPS" --max_test_samples 256 --loggers csv --samples_every_n_epochs 0 \
  --out "$OUT/ddp" --no_progress

"$PY" - "$OUT" "$OOD" >> "$SUMMARY" <<'EOF'
import json, sys
from pathlib import Path
out, ood = Path(sys.argv[1]), sys.argv[2]
metrics = out / "realnvp-eval" / "metrics.json"
if metrics.is_file():
    m = json.loads(metrics.read_text())
    print(f"paper-scale RealNVP: test bits/dim {m['in_distribution']['bpd_mean']:.4f}, "
          f"likelihood AUROC against {ood}: {m['ood'][ood]['auroc']:.4f}")
else:
    print("paper-scale RealNVP: no metrics (see train_paper_realnvp.log and evaluate_paper_realnvp.log)")
rows = out / "compare.json"
if rows.is_file():
    for r in json.loads(rows.read_text()):
        print(f"compare {r['case']} {r['library']}: train {r['train_steps_s']:.2f} steps/s, score "
              f"{r['score_per_s']:.0f}/s, bits/dim {r['test_bpd']:.3f}")
EOF
cat "$SUMMARY"
! grep -q ": exit [1-9]" "$SUMMARY"
