"""In-memory data sets (flowood.data.arrays): reproducible subsets, and huge or constant features reported as
data problems naming the set and the feature, also by training and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowood.data import load_dataset


def test_take_is_reproducible(fashionmnist_npz):
    ds = load_dataset(fashionmnist_npz, "train")
    a, b = ds.take(50, seed=1), ds.take(50, seed=1)
    assert torch.equal(a.data, b.data) and len(a) == 50
    with pytest.raises(ValueError, match="positive"):
        ds.take(0)


def test_huge_or_constant_features_are_data_problems_named_by_set_and_feature(tmp_path):
    from flowood.errors import DataError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    x[3, 2] = 1e30
    np.savez(tmp_path / "huge.npz", embeddings=x)
    with pytest.raises(DataError, match=r"huge.npz:train: feature 2 has values as large as 1e\+30"):
        load_dataset(f"npz:{tmp_path / 'huge.npz'}", "train").check_values(training=True)
    y = rng.normal(size=(64, 5)).astype(np.float32)
    y[:, 4] = 7.0
    np.savez(tmp_path / "constant.npz", embeddings=y)
    ds = load_dataset(f"npz:{tmp_path / 'constant.npz'}", "train")
    with pytest.raises(DataError, match=r"1 feature\(s\) \(4\) have the same value in every sample"):
        ds.check_values(training=True)
    assert ds.check_values() is ds  # a constant feature is no problem for scoring


def test_training_and_evaluation_blame_the_data_not_the_learning_rate_or_checkpoint(tmp_path, capsys):
    from flowood.cli.main import main

    rng = np.random.default_rng(1)
    good = rng.normal(size=(96, 4)).astype(np.float32)
    huge = good.copy()
    huge[:, 1] *= 1e20
    np.savez(tmp_path / "good.npz", embeddings=good)
    np.savez(tmp_path / "huge.npz", embeddings=huge)
    common = ["--flow", "MAF", "--num_coupling_layers", "2", "--num_hidden_units", "8", "--batch_size", "32",
              "--max_steps", "3", "--no_progress"]
    assert main(["train", "--dataset", f"npz:{tmp_path / 'huge.npz'}", "--out", str(tmp_path / "a"), *common]) == 2
    err = capsys.readouterr().err
    assert "huge.npz:train: feature 1 has values as large as" in err and "--lr" not in err
    assert main(["train", "--dataset", f"npz:{tmp_path / 'good.npz'}", "--out", str(tmp_path / "b"), *common]) == 0
    code = main(["evaluate", "--checkpoint", str(tmp_path / "b" / "checkpoints" / "last.ckpt"), "--ood",
                 f"npz:{tmp_path / 'huge.npz'}", "--out", str(tmp_path / "e"), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and "huge.npz:test: feature 1" in err and "checkpoint" not in err.split("error:")[1]
