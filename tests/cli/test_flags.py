"""Flags (flowood.cli.flags): repeated list flags accumulate in every command, list defaults are replaced, and the
library's parameter names become flags in messages."""

from __future__ import annotations

import json

import pytest
from builders import tiny_checkpoint

from flowood.cli.flags import given_options
from flowood.cli.main import as_flags, build_parser, main


@pytest.mark.parametrize("args, dest, expected", [
    (["evaluate", "--checkpoint", "c", "--out", "o", "--ood", "a", "--ood", "b", "c"], "ood", ["a", "b", "c"]),
    (["evaluate", "--checkpoint", "c", "--out", "o", "--ood", "a", "--scores", "likelihood", "--scores", "waic"],
     "scores", ["likelihood", "waic"]),
    (["evaluate", "--checkpoint", "c", "--out", "o", "--ood", "a", "--ensemble", "x", "--ensemble", "y"],
     "ensemble", ["x", "y"]),
    (["inspect", "--checkpoint", "c", "--out", "o", "--images", "a", "--images", "b"], "images", ["a", "b"]),
    (["inspect", "--checkpoint", "c", "--out", "o", "--images", "a", "--temperatures", "1", "--temperatures", "2"],
     "temperatures", [1.0, 2.0]),
    (["embed", "--dataset", "d", "--out", "o.npz", "--ood", "a", "--ood", "b"], "ood", ["a", "b"]),
    (["reproduce", "--only", "a", "--only", "b", "c"], "only", ["a", "b", "c"]),
    (["data", "fetch", "a", "b"], "names", ["a", "b"]),
])
def test_repeated_list_flags_accumulate(args, dest, expected):
    """``--ood A --ood B`` is ``--ood A B`` in every command (argparse alone keeps only B, silently)."""
    from flowood.inspect.run import InspectOptions
    from flowood.options import from_mapping

    parsed = build_parser().parse_args(args)
    if dest == "temperatures":  # typed by the option's definition, after parsing
        parsed = from_mapping(InspectOptions, given_options(parsed, InspectOptions))
    assert getattr(parsed, dest) == expected


def test_list_defaults_are_replaced_not_extended():
    from flowood.inspect.run import InspectOptions
    from flowood.options import from_mapping

    args = build_parser().parse_args(["inspect", "--checkpoint", "c", "--out", "o", "--images", "a",
                                      "--temperatures", "0.3"])
    assert from_mapping(InspectOptions, given_options(args, InspectOptions)).temperatures == [0.3]


def test_evaluate_scores_every_repeated_ood_set(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "f.pt", num_scales=1)
    code = main(["evaluate", "--checkpoint", str(ckpt), "--ood", "noise", "--ood", "constant", "--scores",
                 "likelihood", "--out", str(tmp_path / "e"), "--no_progress"])
    assert code == 0
    assert list(json.loads((tmp_path / "e" / "metrics.json").read_text())["ood"]) == ["noise", "constant"]


def test_library_words_become_flags():
    assert as_flags("pass `overwrite=True`, lower `lr` or use `nan_policy='rollback'`; `flowood train` ran") == \
        "pass --overwrite, lower --lr or use --nan_policy rollback; `flowood train` ran"
    assert as_flags("pass `ood=['mnist']`") == "pass --ood mnist"
