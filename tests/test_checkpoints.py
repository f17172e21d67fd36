"""Loading flows and weights files (flowood.checkpoints): every bad file gets a message naming its real problem."""

from __future__ import annotations

import os

import pytest
import torch

from flowood.checkpoints import CheckpointError, load_flow, read_weights_file, save_flow
from flowood.flows import RealNVP


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
    save_flow(RealNVP((1, 4, 4), num_blocks=1, num_mid_channels=4, num_scales=1), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_flow(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_flow(tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match="is a folder, not a weights file"):
        read_weights_file(tmp_path, what="weights file")
