"""The command line (flowood.cli.main): known user errors exit with code 2 and one line, without a traceback; the
data list; the console script."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import tiny_checkpoint

from flowood.cli.main import main


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--flow", "RealNVPP", "--dataset", "npz:/nonexistent.npz", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'RealNVP'" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar-1O", "--out", str(tmp_path / "y")]) == 2
    assert "did you mean 'cifar10'" in capsys.readouterr().err
    assert main(["data", "fetch", "cifar1O"]) == 2
    assert main([]) == 2


def test_cli_data_list(capsys, tmp_path):
    assert main(["data", "list", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "flowood data fetch kmnist" in out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "flowood.cli.main", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "f.pt", input_shape=(1, 28, 28))


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


def test_cli_embed_errors_are_one_line(tmp_path, capsys):
    assert main(["embed", "--dataset", "digits", "--backbone", "resnet81", "--out", str(tmp_path / "x.npz"),
                 "--train-classifier"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'resnet18'" in err and "Traceback" not in err
