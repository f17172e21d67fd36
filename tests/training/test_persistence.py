"""Persistence (flowood.training.persistence): runs killed with SIGKILL resume to the same result, a resume
mid-epoch is exact, checkpoints are written atomically, and disk space is checked before training."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest
import torch
from builders import start_flowood

from flowood.checkpoints import load_flow
from flowood.training import train
from flowood.training.persistence import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    DiskSpaceError,
    EpochPermutationSampler,
    check_disk_space,
)


def train_args(dataset, out, *extra):
    return ["train", "--dataset", dataset, "--flow", "RealNVP", "--num_blocks", "1", "--num_mid_channels", "8",
            "--batch_size", "32", "--max_steps", "45", "--num_epochs", "100", "--max_test_samples", "64",
            "--checkpoint_every_n_steps", "4", "--aug", "--out", str(out), "--no_progress", "--threads", "1", *extra]
    # bitwise equal numbers need the same thread count in every run (flowood otherwise shares the CPUs by load)


def final_state(out):
    return load_flow(out / "checkpoints" / "last.ckpt").flow.state_dict()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, fashionmnist_npz):
    reference = start_flowood(*train_args(fashionmnist_npz, tmp_path / "ref"))
    assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()[-2000:]
    rng = random.Random(0)
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.ckpt"
    kills = 0
    proc = start_flowood(*train_args(fashionmnist_npz, out))
    for _ in range(2):  # killed twice, each time at a random moment after a checkpoint exists
        deadline = time.time() + 120
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        mtime = ckpt.stat().st_mtime
        load_flow(ckpt)  # whatever moment the kill came, the checkpoint on disk is complete
        proc = start_flowood(*train_args(fashionmnist_npz, out, "--resume"))
        while proc.poll() is None and ckpt.stat().st_mtime == mtime:
            time.sleep(0.05)  # wait until the resumed run has written a checkpoint of its own
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()[-2000:]
    assert kills >= 1
    expected, got = final_state(tmp_path / "ref"), final_state(out)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key  # bitwise on CPU
    ref_summary = json.loads((tmp_path / "ref" / "train_summary.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["test_bpd"] == ref_summary["test_bpd"] and summary["steps"] == 45


def test_resume_mid_epoch_in_process_is_exact(tmp_path, train_config):
    """The same promise without processes: stop after 13 steps (mid-epoch), resume to 30."""
    def cfg(out, steps):
        return train_config(out, flow="Glow", num_scales=1, num_coupling_layers_per_scale=2, max_steps=steps,
                            num_epochs=100, aug=True)
    full = train(cfg(tmp_path / "full", 30), progress=False)
    train(cfg(tmp_path / "part", 13), progress=False)
    resumed = train(cfg(tmp_path / "part", 30), resume=True, progress=False)
    assert resumed.steps == 30 and resumed.test_bpd == full.test_bpd
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "part" / "logs" / "csv" / "metrics.csv").exists()
    assert (tmp_path / "part" / "logs" / "csv" / "resume_1" / "metrics.csv").exists()  # earlier rows kept


def test_epoch_permutation_sampler_resumes_part_way():
    s = EpochPermutationSampler(10, seed=3, batch_size=2)
    epoch0, epoch1 = list(s), list(s)
    assert sorted(epoch0) == list(range(10)) and epoch0 != epoch1 and s.epoch == 1
    s.set_epoch(7)  # ignored: the sampler counts its own passes
    s.resume_at(0, 4)
    assert list(s) == epoch0[4:] and s.epoch == 0 and s.skip == 4
    assert list(s) == epoch1  # the skip applies once, then the next epoch follows
    s.resume_at(0, 9)  # fewer than a batch left: that epoch was done
    assert list(s) == epoch1 and s.epoch == 1


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"a": torch.ones(2)}, path)
    import errno

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="no space left.*previous checkpoint is intact.*resume"):
        io.save_checkpoint({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_disk_space_is_checked_before_training(tmp_path, fashionmnist_npz, monkeypatch, capsys):
    class Usage:
        free = 1000
    with pytest.raises(DiskSpaceError, match="MiB free"):
        check_disk_space(tmp_path / "new" / "dir", 10**6, usage=lambda p: Usage())
    import shutil

    from flowood.cli.main import main
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage())
    code = main(["train", "--dataset", fashionmnist_npz, "--num_blocks", "1", "--num_mid_channels", "8",
                 "--max_steps", "2", "--out", str(tmp_path / "r"), "--no_progress"])
    assert code == 2 and "free space or choose another --out" in capsys.readouterr().err
