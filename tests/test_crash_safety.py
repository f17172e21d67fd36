"""Killed at a random moment, every command leaves each output file complete or absent, and running it again
gives what an uninterrupted run gives (training's own kill-and-resume test is in training/test_persistence.py)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from builders import start_flowood
from PIL import Image

from flowood.outputs import LOCK, MANIFEST

pytestmark = pytest.mark.slow


def is_complete(path: Path) -> bool:
    """Whether a file parses as what its suffix says (a half-written file does not)."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            [f[k] for k in f.files]
    elif suffix == ".png":
        with Image.open(path) as im:
            im.load()
    elif suffix in (".ckpt", ".pt"):
        torch.load(path, weights_only=True)
    elif suffix == ".yaml":
        yaml.safe_load(path.read_text())
    elif suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>")
    return True


def assert_complete_or_absent(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and ".flowood-tmp-" not in path.name and path.name not in (LOCK, MANIFEST) \
                and "logs" not in path.parts:  # loggers append; their readers skip a cut last record
            assert is_complete(path), path


def finish(proc: subprocess.Popen) -> None:
    assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()[-3000:]


def kill_at_random(args: list[str], seed: int, low: float, high: float) -> float:
    """Run, SIGKILL after a random delay in [low, high] seconds, and return the delay; the command must still
    have been running then (else the test would prove nothing)."""
    proc = start_flowood(*args)
    delay = random.Random(seed).uniform(low, high)
    time.sleep(delay)
    assert proc.poll() is None, f"the command finished within {delay:.1f} s, before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return delay


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fashionmnist_npz):
    out = tmp_path_factory.mktemp("crash") / "train"
    finish(start_flowood("train", "--dataset", fashionmnist_npz, "--num_blocks", "1", "--num_mid_channels", "8",
                         "--batch_size", "32", "--max_steps", "20", "--max_test_samples", "64", "--no_progress",
                         "--out", str(out)))
    return out / "checkpoints" / "last.ckpt"


def evaluation(path: Path) -> dict:
    metrics = json.loads((path / "metrics.json").read_text())
    return {"in": metrics["in_distribution"], "ood": metrics["ood"]}


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_killed_then_run_again(tmp_path, checkpoint, mnist_npz, seed):
    def args(out):
        return ["evaluate", "--checkpoint", str(checkpoint), "--ood", mnist_npz,
                "noise", "--max_samples", "300", "--bootstrap", "20", "--no_progress", "--out", str(out)]
    finish(start_flowood(*args(tmp_path / "reference")))
    kill_at_random(args(tmp_path / "killed"), seed, 3.0, 9.0)
    if (tmp_path / "killed").exists():
        assert_complete_or_absent(tmp_path / "killed")
    finish(start_flowood(*args(tmp_path / "killed"), "--overwrite"))
    assert evaluation(tmp_path / "killed") == evaluation(tmp_path / "reference")


def test_embed_killed_then_run_again(tmp_path, fashionmnist_npz, mnist_npz):
    def args(out):
        return ["embed", "--dataset", fashionmnist_npz, "--train-classifier",
                "--epochs", "2", "--ood", mnist_npz, "--no_progress", "--out",
                str(out / "emb.npz")]
    finish(start_flowood(*args(tmp_path / "reference")))
    kill_at_random(args(tmp_path / "killed"), 3, 3.0, 8.0)
    if (tmp_path / "killed").exists():
        assert_complete_or_absent(tmp_path / "killed")
    finish(start_flowood(*args(tmp_path / "killed"), "--overwrite"))
    for name in ("emb.npz", "emb-mnist-small.npz"):
        with np.load(tmp_path / "reference" / name) as a, np.load(tmp_path / "killed" / name) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "meta")


def test_reproduce_killed_then_resumed(tmp_path, mini_suite):
    configs = mini_suite

    def args(out):
        return ["reproduce", "--configs", str(configs), "--suite", "mini", "--scale", "smoke", "--only", "base",
                "--out", str(out), "--threads", "1"]  # bitwise equal numbers need the same thread count
    finish(start_flowood(*args(tmp_path / "reference")))
    kill_at_random(args(tmp_path / "killed"), 5, 4.0, 12.0)
    if (tmp_path / "killed").exists():
        assert_complete_or_absent(tmp_path / "killed")
    finish(start_flowood(*args(tmp_path / "killed")))

    def numbers(out):
        stages = json.loads((out / "base" / "status.json").read_text())["stages"]
        return {stage: {k: v for k, v in values.items() if k != "seconds"} for stage, values in stages.items()}
    assert numbers(tmp_path / "killed") == numbers(tmp_path / "reference")
