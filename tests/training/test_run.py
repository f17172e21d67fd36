"""Training end to end (flowood.training.run) on the committed real FashionMNIST fixture: outputs, resume, early
errors, channels-last memory, mixed precision, and 2-process DDP on CPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from flowood.checkpoints import CheckpointError, load_flow
from flowood.training import OutputExistsError, load_config, train


def test_train_writes_everything_and_learns(tmp_path, fashionmnist_npz, train_config):
    result = train(train_config(tmp_path / "run", max_steps=30), progress=False)
    out = tmp_path / "run"
    assert result.steps == 30
    assert (out / "config.yaml").exists() and result.checkpoint.exists()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 30 and summary["train_samples"] == 600
    assert result.test_bpd < 7.5  # from about 8 bits/dim at initialisation
    with open(out / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train_bpd_step") for r in rows)
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents*"))
    loaded = load_flow(result.checkpoint)
    assert loaded.train_config["dataset"] == fashionmnist_npz
    assert loaded.flow.config["flow"] == "RealNVP" and not loaded.flow.training


def test_resume_continues_from_last_checkpoint(tmp_path, train_config):
    train(train_config(tmp_path / "run", max_steps=6), progress=False)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        train(train_config(tmp_path / "run", max_steps=6), progress=False)
    result = train(train_config(tmp_path / "run", max_steps=10), resume=True, progress=False)
    assert result.steps == 10
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(train_config(tmp_path / "run"), resume=str(tmp_path / "missing.ckpt"), progress=False)
    result = train(train_config(tmp_path / "run"), overwrite=True, progress=False, max_steps=3)  # a config + values
    assert result.steps == 3


def test_glow_trains_with_rmsprop_and_lr_anneal(tmp_path, train_config):
    cfg = train_config(tmp_path / "run", flow="Glow", num_coupling_layers_per_scale=2, st_type="highway",
                       optim="RMSprop", lr_anneal=True, num_epochs=2, max_steps=None, max_train_samples=64)
    result = train(cfg, progress=False)
    assert result.steps == 4  # 2 epochs of 64 samples in batches of 32
    assert torch.isfinite(torch.tensor(result.test_bpd))


def test_unknown_dataset_fails_before_training(tmp_path):
    cfg = load_config(None, dict(dataset="fashion-mnst", out=str(tmp_path / "r")))
    from flowood.data import UnknownDatasetError
    with pytest.raises(UnknownDatasetError, match="fashionmnist"):
        train(cfg, progress=False)
    with pytest.raises(UnknownDatasetError, match="fashionmnist"):  # options as values, as every entry point
        train(dataset="fashion-mnst", out=str(tmp_path / "r"), progress=False)
    with pytest.raises(ValueError, match="did you mean 'max_steps'"):
        train(cfg, max_stesp=3)


def test_training_set_smaller_than_a_batch_is_refused(tmp_path):
    from flowood.training import load_config, train
    cfg = load_config(None, dict(dataset="wine0", flow="MAF", batch_size=64, out=str(tmp_path / "t")))
    with pytest.raises(ValueError, match="41 samples, fewer than batch_size 64"):
        train(cfg, progress=False)


def test_resume_from_a_corrupt_checkpoint_is_one_clear_error(tmp_path, fashionmnist_npz, capsys):
    from flowood.cli.main import main
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02garbage")
    code = main(["train", "--dataset", fashionmnist_npz, "--out", str(tmp_path / "run"), "--resume", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "corrupt or truncated" in err and "Traceback" not in err


def test_training_with_channels_last_matches_the_default(tmp_path, train_config):
    results = []
    for cl in (False, True):
        cfg = train_config(tmp_path / f"cl{cl}", max_steps=5, channels_last=cl)
        results.append(train(cfg, progress=False).test_bpd)
    # (flowood.flows' optimize tests show equal losses and gradients to 1e-4; training agrees less closely,
    # because the paper's ResNet has biases just before a BatchNorm, whose gradients are zero up to rounding,
    # and Adam's first steps move each parameter by about lr whatever the size of its gradient)
    assert results[1] == pytest.approx(results[0], rel=1e-2)


def test_training_with_lightning_bf16_mixed_precision(tmp_path, train_config):
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = train_config(tmp_path / precision, max_steps=5, precision=precision)
        results[precision] = train(cfg, progress=False).test_bpd
    assert results["bf16-mixed"] == pytest.approx(results["32-true"], rel=2e-2)
    assert results["bf16-mixed"] != results["32-true"]


def test_default_precision_is_resolved_and_recorded(tmp_path, train_config):
    """``auto`` (the default) trains in bf16 on a CPU with native BF16 and in fp32 elsewhere; the run records what
    it used, in config.yaml (so a resumed run keeps it), train_summary.json and the result."""
    import yaml

    from flowood.runtime import native_bf16
    from flowood.training import TrainConfig

    expected = "bf16" if native_bf16() else "fp32"
    cfg = TrainConfig(**{**vars(train_config(tmp_path / "unused")), "precision": "auto", "out": str(tmp_path / "r"),
                         "max_steps": 2})  # not checked: train() resolves it
    result = train(cfg, progress=False)
    assert cfg.precision == "auto" and result.precision == expected  # the caller's config is left as it was
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["precision"] == expected
    assert json.loads((tmp_path / "r" / "train_summary.json").read_text())["precision"] == expected


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, fashionmnist_npz):
    """2-process DDP (gloo) through Lightning, with Glow's ActNorm initialised identically on both ranks."""
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "flowood.cli.main", "train", "--dataset", fashionmnist_npz,
           "--out", str(out), "--flow", "Glow", "--num_coupling_layers_per_scale", "2", "--num_blocks", "1",
           "--num_mid_channels", "8", "--batch_size", "16", "--max_steps", "4", "--max_test_samples", "64",
           "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", "--no_progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test bits/dim" in result.stdout
    from flowood.runtime import native_bf16  # the default precision, said in the last line
    assert ("bf16 st-networks: the default on this CPU" if native_bf16() else "precision fp32") in result.stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4
    loaded = load_flow(out / "checkpoints" / "last.ckpt")
    assert bool(loaded.flow.steps[1].initialized)


def test_ddp_on_one_device_trains_and_saves_its_checkpoint(tmp_path, fashionmnist_npz):
    """DDP with one process: Lightning wraps a training sampler in its distributed one whenever the strategy is
    parallel, so the loader must be the plain shuffled one (the resumable one failed saving its position)."""
    out = tmp_path / "ddp1"
    cmd = [sys.executable, "-m", "flowood.cli.main", "train", "--dataset", fashionmnist_npz, "--out", str(out),
           "--num_blocks", "1", "--num_mid_channels", "8", "--batch_size", "16", "--max_steps", "2",
           "--max_test_samples", "32", "--devices", "1", "--accelerator", "cpu", "--strategy", "ddp", "--no_progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2
