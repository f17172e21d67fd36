"""Reliability: runs killed with SIGKILL resume to the same result, atomic checkpoints, NaN/Inf handling
(skip, rollback with a lower learning rate), invertibility checks, disk space, and bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flowood.checkpoints import CheckpointError, load_flow
from flowood.training import NonFiniteLossError, load_config, train
from flowood.training.persistence import (AtomicCheckpointIO, CheckpointWriteError, DiskSpaceError,
                                          EpochPermutationSampler, check_disk_space)

SRC = Path(__file__).resolve().parents[1] / "src"


def fm(fixtures_dir):
    return f"npz:{fixtures_dir}/fashionmnist-small.npz"


def train_args(fixtures_dir, out, *extra):
    return [sys.executable, "-m", "flowood.cli.main", "train", "--dataset", fm(fixtures_dir), "--flow", "RealNVP",
            "--num_blocks", "1", "--num_mid_channels", "8", "--batch_size", "32", "--max_steps", "45",
            "--num_epochs", "100", "--max_test_samples", "64", "--checkpoint_every_n_steps", "4", "--aug",
            "--out", str(out), "--no_progress", *extra]


def run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def final_state(out):
    return load_flow(out / "checkpoints" / "last.ckpt").flow.state_dict()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, fixtures_dir):
    reference = run(train_args(fixtures_dir, tmp_path / "ref"))
    assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()[-2000:]
    rng = random.Random(0)
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.ckpt"
    kills = 0
    proc = run(train_args(fixtures_dir, out))
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
        proc = run(train_args(fixtures_dir, out, "--resume"))
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


def test_resume_mid_epoch_in_process_is_exact(tmp_path, fixtures_dir):
    """The same promise without processes: stop after 13 steps (mid-epoch), resume to 30."""
    def cfg(out, steps):
        return load_config(None, dict(dataset=fm(fixtures_dir), flow="Glow", num_scales=1,
                                      num_coupling_layers_per_scale=2, num_blocks=1, num_mid_channels=8,
                                      batch_size=32, max_test_samples=64, max_steps=steps, num_epochs=100,
                                      out=str(out), aug=True))
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


def test_disk_space_is_checked_before_training(tmp_path, fixtures_dir, monkeypatch, capsys):
    class Usage:
        free = 1000
    with pytest.raises(DiskSpaceError, match="MiB free"):
        check_disk_space(tmp_path / "new" / "dir", 10**6, usage=lambda p: Usage())
    import shutil

    from flowood.cli.main import main
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage())
    code = main(["train", "--dataset", fm(fixtures_dir), "--num_blocks", "1", "--num_mid_channels", "8",
                 "--max_steps", "2", "--out", str(tmp_path / "r"), "--no_progress"])
    assert code == 2 and "free space or choose another --out" in capsys.readouterr().err


def tiny(tmp_path, fixtures_dir, **kw):
    values = dict(dataset=fm(fixtures_dir), flow="RealNVP", num_blocks=1, num_mid_channels=8, batch_size=32,
                  max_test_samples=64, max_steps=12, out=str(tmp_path / "run"))
    values.update(kw)
    return load_config(None, values)


def test_rollback_restores_last_good_state_and_lowers_the_lr(tmp_path, fixtures_dir, monkeypatch):
    from flowood.training.module import FlowModule
    original = FlowModule._loss
    calls = {"n": 0}

    def sometimes_nan(self, x):
        calls["n"] += 1
        loss = original(self, x)
        return loss * float("nan") if calls["n"] in (6, 7) else loss
    monkeypatch.setattr(FlowModule, "_loss", sometimes_nan)
    result = train(tiny(tmp_path, fixtures_dir, nan_policy="rollback", nan_lr_factor=0.25, rollback_every=2,
                        max_steps=10, lr=1e-3), progress=False)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert summary["rollbacks"] == 2 and summary["skipped_nonfinite_steps"] == 2
    ckpt = torch.load(result.checkpoint, weights_only=True)
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.25 ** 2)


def test_nonfinite_gradients_are_caught_at_the_step(tmp_path, fixtures_dir, monkeypatch):
    from flowood.training.module import FlowModule

    def poison(self):  # right after backward, before the guard looks at the gradients
        for p in self.flow.parameters():
            if p.grad is not None:
                p.grad.fill_(float("inf"))
    monkeypatch.setattr(FlowModule, "on_after_backward", poison)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a NaN/Inf gradient"):
        train(tiny(tmp_path, fixtures_dir, nan_tolerance=3), progress=False)


def test_exploding_loss_is_caught_at_the_step(tmp_path, fixtures_dir, monkeypatch):
    from flowood.training.module import FlowModule
    original = FlowModule._loss
    monkeypatch.setattr(FlowModule, "_loss", lambda self, x: original(self, x) * 1e5)  # finite but huge
    with pytest.raises(NonFiniteLossError, match="exploding log-determinant"):
        train(tiny(tmp_path, fixtures_dir, nan_tolerance=2), progress=False)
    monkeypatch.setattr(FlowModule, "_loss", lambda self, x: original(self, x) * 2)
    assert train(tiny(tmp_path / "ok", fixtures_dir, explode_bpd=1e4), progress=False).steps == 12


def test_invertibility_is_checked_at_each_checkpoint(tmp_path, fixtures_dir):
    result = train(tiny(tmp_path, fixtures_dir), progress=False)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert 0.0 <= summary["invertibility_error"] < 1e-4
    assert torch.load(result.checkpoint, weights_only=True)["flowood_invertibility_error"] < 1e-4


def test_resume_from_a_corrupt_checkpoint_is_one_clear_error(tmp_path, fixtures_dir, capsys):
    from flowood.cli.main import main
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02garbage")
    code = main(["train", "--dataset", fm(fixtures_dir), "--out", str(tmp_path / "run"), "--resume", "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "corrupt or truncated" in err and "Traceback" not in err


def test_bad_training_options_are_refused(tmp_path, fixtures_dir):
    from flowood.flows import ConfigError
    with pytest.raises(ConfigError, match="did you mean 'rollback'"):
        tiny(tmp_path, fixtures_dir, nan_policy="rollbak").check()
    with pytest.raises(ConfigError, match="nan_lr_factor"):
        tiny(tmp_path, fixtures_dir, nan_lr_factor=2.0).check()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    from flowood.checkpoints import save_flow
    from flowood.flows import RealNVP
    flow = RealNVP((1, 28, 28), num_blocks=1, num_mid_channels=4)
    flow.log_prob(torch.rand(4, 1, 28, 28))
    return save_flow(flow, tmp_path_factory.mktemp("ckpt") / "f.pt", {"dataset": "digits"})


def bad_npz(tmp_path, name, **arrays):
    np.savez(tmp_path / f"{name}.npz", **arrays)
    return f"npz:{tmp_path}/{name}.npz"


@pytest.mark.parametrize("case,expect", [
    ("unknown_set", "did you mean 'mnist'"),
    ("unknown_score", "did you mean 'complexity'"),
    ("float_images", "must be uint8"),
    ("nan_vectors", "NaN or Inf"),
    ("empty", "empty"),
    ("vectors_for_images", "vectors cannot be adapted"),
    ("bad_rank", r"must be \[N,H,W\]"),
    ("missing_npz", "does not exist"),
    ("foreign_ckpt", "not a flowood checkpoint"),
    ("out_is_file", "is a file"),
])
def test_evaluate_bad_input_is_one_line(case, expect, tmp_path, small_ckpt, capsys):
    """Every bad input to `flowood evaluate` exits with code 2 and one line naming the problem."""
    from flowood.cli.main import main
    ood, extra, ckpt = ["noise"], [], str(small_ckpt)
    if case == "unknown_set":
        ood = ["mnsit"]
    elif case == "unknown_score":
        extra = ["--scores", "complexty"]
    elif case == "float_images":
        ood = [bad_npz(tmp_path, case, images=np.random.rand(3, 28, 28))]
    elif case == "nan_vectors":
        ood = [bad_npz(tmp_path, case, embeddings=np.full((3, 4), np.nan, np.float32))]
    elif case == "empty":
        ood = [bad_npz(tmp_path, case, images=np.zeros((0, 28, 28), np.uint8))]
    elif case == "vectors_for_images":
        ood = [bad_npz(tmp_path, case, embeddings=np.zeros((3, 4), np.float32))]
    elif case == "bad_rank":
        ood = [bad_npz(tmp_path, case, images=np.zeros((3, 2, 28, 28, 1), np.uint8))]
    elif case == "missing_npz":
        ood = [f"npz:{tmp_path}/nothing.npz"]
    elif case == "foreign_ckpt":
        torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
        ckpt = str(tmp_path / "foreign.pt")
    elif case == "out_is_file":
        (tmp_path / "file").write_text("x")
    out = tmp_path / ("file" if case == "out_is_file" else "eval")
    code = main(["evaluate", "--checkpoint", ckpt, "--ood", *ood, "--out", str(out), "--no_progress", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(expect, err), err


def test_flow_api_rejects_wrong_shape_range_dtype_and_nan():
    from flowood.flows import RealNVP
    flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4).eval()
    for bad, match in [(torch.rand(2, 1, 4, 4), "adapt_images"), (torch.rand(2, 1, 8, 8) * 3, r"\[0, 1\]"),
                       (torch.full((2, 1, 8, 8), float("nan")), "NaN"), (torch.zeros(2, 1, 8, 8, dtype=torch.int32),
                                                                         "uint8|float")]:
        with pytest.raises(ValueError, match=match):
            flow.log_prob(bad)


def test_rollback_recovers_from_a_far_too_high_learning_rate(tmp_path, fixtures_dir):
    """At lr 10 every early step explodes; the rollbacks return to checked states (the start, if need be) with
    ever lower rates until training works. The kept "good" state used to be the damaged one after step 1, so
    the run never recovered and stopped."""
    result = train(tiny(tmp_path, fixtures_dir, lr=10.0, nan_policy="rollback", rollback_every=5, max_steps=200,
                        num_epochs=1000), progress=False)
    summary = json.loads((result.out / "train_summary.json").read_text())
    assert summary["steps"] == 200 and summary["rollbacks"] >= 3
    assert result.test_bpd < 7.5  # the untrained model scores about 9.8 bits/dim on this data


def test_the_final_error_names_only_checkpoints_that_exist(tmp_path, fixtures_dir, monkeypatch):
    from flowood.training.module import FlowModule
    original = FlowModule._loss
    calls = {"n": 0}

    def nan_after(self, x):
        calls["n"] += 1
        loss = original(self, x)
        return loss * float("nan") if calls["n"] > 6 else loss
    monkeypatch.setattr(FlowModule, "_loss", nan_after)
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before this"):
        train(tiny(tmp_path / "a", fixtures_dir, nan_tolerance=3), progress=False)
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match=r"resume from .*last\.ckpt"):
        train(tiny(tmp_path / "b", fixtures_dir, nan_tolerance=3, checkpoint_every_n_steps=2), progress=False)
