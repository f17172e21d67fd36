"""``benchmarks/gpu_check.sh --dry-run``: every step of the GPU check runs, tiny and on the CPU, and the summary reads
its results; the real run needs a CUDA machine (see the script's header)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_checks_dry_run_runs_every_step_and_summarises_them(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=900)
    summary = (tmp_path / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    for name in ("test_cuda", "compare", "train_paper_realnvp", "evaluate_paper_realnvp", "ddp"):
        assert f"{name}: exit 0" in summary
    assert "dry run: 1, device: cpu" in summary
    assert "paper-scale RealNVP: test bits/dim" in summary and "likelihood AUROC against npz:" in summary
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert {r["library"] for r in rows} >= {"flowood-cl+malloc", "normflows+malloc"}
    config = (tmp_path / "realnvp" / "config.yaml").read_text()
    assert "num_mid_channels: 64" in config and "num_blocks: 6" in config and "lr: 5.0e-05" in config
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()


def test_the_gpu_runs_rows_are_rows_of_compare(compare):
    """The dry run times only the fp32 rows; the GPU run's rows must still be rows that compare.py knows."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    row_lists = [line.split("(", 1)[1].split(")", 1)[0].split() for line in script.splitlines()
                 if line.strip().startswith("COMPARE_ROWS=(")]
    assert len(row_lists) == 2 and len(row_lists[1]) == 5  # dry run, GPU run
    for rows in row_lists:
        assert set(rows) <= set(compare.CASES["glow-1x28x28"][2]), rows
    assert {"flowood-cl-bf16+malloc", "flowood-compile+malloc", "normflows-bf16+malloc"} <= set(row_lists[1])


def test_the_gpu_check_refuses_unknown_arguments():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
