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


def _help_of_flag(capsys, command: list[str], flag: str) -> str:
    """The help line of ``flag`` in ``flowood COMMAND --help``, unwrapped."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index(f"{flag} N")
    return text[start:text.index(")", text.index("(default:", start)) + 1]


def test_the_flow_scores_options_are_defined_once(capsys):
    """evaluate, detector fit and detector select nest ScoreOptions: the same flags with the same help and default,
    and a value given by its flat name lands in the nested options."""
    from dataclasses import fields

    from flowood.deploy import DetectorOptions
    from flowood.deploy.select import SelectOptions
    from flowood.evaluation import EvaluateOptions
    from flowood.ood import ScoreOptions
    from flowood.options import from_mapping

    for cls in (EvaluateOptions, DetectorOptions):
        names = {f.name for f in fields(cls)}
        assert "typicality_batch" not in names and "background_steps" not in names  # no copies
        assert from_mapping(cls, {"typicality_batch": "4"}).score_options == ScoreOptions(typicality_batch=4)
    assert from_mapping(SelectOptions, {"background_steps": 7}).detector.score_options.background_steps == 7
    for flag in ("--typicality_batch", "--background_steps"):
        lines = {_help_of_flag(capsys, command, flag)
                 for command in (["evaluate"], ["detector", "fit"], ["detector", "select"])}
        assert len(lines) == 1, lines


def test_the_flags_every_command_shares_are_declared_once(capsys, tmp_path):
    """--overwrite, --no_progress, --threads and --checkpoint read the same in every command that takes them; the
    defaults of --no_progress and --threads are the library's."""
    from flowood.cli.main import COMMANDS

    def help_lines(command: list[str]) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    pages = {" ".join(c): help_lines(c) for c in (["train"], ["evaluate"], ["inspect"], ["detector", "fit"],
                                                  ["detector", "select"], ["score"], ["export"])}
    for text in ("--overwrite replace an earlier output of this command at --out",
                 "--no_progress, --no-progress turn progress off", "--threads N CPU threads to compute with"):
        assert all(text in page for page in pages.values()), text
    checkpoint = "--checkpoint CKPT a checkpoint written by flowood train (OUT/checkpoints/last.ckpt)"
    assert all(checkpoint in page for name, page in pages.items() if name not in ("train", "score"))
    assert set(COMMANDS) == {"train", "evaluate", "inspect", "embed", "compare", "reproduce", "detector", "score",
                             "serve", "export", "data"}
    assert main(["compare", "--runs", f"a={tmp_path}", "--out", str(tmp_path / "c"), "--threads", "0"]) == 2
    assert "error: threads must be at least 1" in capsys.readouterr().err  # checked as the option says
