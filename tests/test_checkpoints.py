"""Loading flows and weights files (flowood.checkpoints): save and load round-trip; every bad file gets a message
naming its real problem."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from builders import tiny_realnvp

from flowood.checkpoints import CheckpointError, load_flow, read_weights_file, save_flow
from flowood.cli.main import main
from flowood.evaluation import evaluate


class NotATensor:
    pass


def test_a_file_holding_arbitrary_objects_is_refused_as_unsafe_not_corrupt(tmp_path):
    torch.save({"state_dict": {}, "hook": NotATensor()}, tmp_path / "a.ckpt")
    torch.save({"run": os.system}, tmp_path / "b.ckpt")
    for name in ("a.ckpt", "b.ckpt"):
        with pytest.raises(CheckpointError, match="refused: it holds objects that are not plain tensors") as info:
            load_flow(tmp_path / name)
        assert "corrupt" not in str(info.value)


def test_corrupt_missing_and_folder_paths(tmp_path):
    path = tmp_path / "flow.pt"
    save_flow(tiny_realnvp((1, 4, 4), num_scales=1), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_flow(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_flow(tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match="is a folder, not a weights file"):
        read_weights_file(tmp_path, what="weights file")


def test_bad_checkpoints_give_clear_errors(tmp_path, trained_checkpoint):
    ckpt = trained_checkpoint
    raw = ckpt.read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_flow(tmp_path / "trunc.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a flowood checkpoint"):
        load_flow(tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_flow(tmp_path / "missing.ckpt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "trunc.ckpt"), "--ood", "noise", "--out",
                 str(tmp_path / "e")]) == 2


def test_save_flow_roundtrip_and_wrong_shape_data(tmp_path):
    flow = tiny_realnvp(init_batch=4)
    path = save_flow(flow, tmp_path / "f.pt", {"dataset": "digits"})
    loaded = load_flow(path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(loaded.flow.log_prob(x, noise="center"), flow.eval().log_prob(x, noise="center"))
    np.savez(tmp_path / "vec.npz", embeddings=np.random.randn(10, 5).astype(np.float32))
    with pytest.raises(ValueError, match="vectors cannot be adapted"):
        evaluate(loaded, [f"npz:{tmp_path}/vec.npz"], progress=False, scores=["likelihood"])
    r = evaluate(loaded, ["noise"], progress=False, scores=["likelihood"])  # the checkpoint's in-distribution set
    assert r.metrics.in_distribution.name == "digits"
