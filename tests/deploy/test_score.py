"""Deploying a detector (flowood.deploy): fit it into a file, score files, folders, globs and .npz files one row
per input, streamed, with unreadable inputs reported, not fatal; and the CLI around it."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowood.cli.main import main
from flowood.deploy import (
    FIELDS,
    expand_inputs,
    fit_detector,
    is_scores_file,
    score_inputs,
    stream_batches,
    write_scores,
)
from flowood.deploy.inputs import list_sources, read_sources
from flowood.ood import OODDetector
from flowood.options import ConfigError


def test_inputs_expand_to_one_sample_each_and_batches_stay_bounded(new_data):
    folder, npz, mnist = new_data
    items = list(expand_inputs([str(folder), str(npz), str(folder / "mnist*.png")]))
    names = [i.name for i in items]
    assert len(items) == 7 + 4 + 4 and names.count(str(folder / "mnist0.png")) == 2
    assert f"{npz}#3" in names and [i for i in items if i.error] == [items[0]]  # broken.png, sorted first
    deep = next(i for i in items if i.name.endswith("deep16.png"))
    assert np.array_equal(deep.sample[0], mnist[4])  # 16-bit scaled back to the 8-bit image
    batches = list(stream_batches(iter(items), (1, 28, 28), batch_size=4))
    assert max(len(b.names) for b in batches) <= 4 and sum(len(b.names) for b in batches) == 14
    with pytest.raises(Exception, match="neither a file, a folder nor a pattern"):
        list(expand_inputs([str(folder / "nothing*.png")]))


def test_sources_listed_here_and_read_elsewhere_are_the_same_items(new_data, tmp_path, monkeypatch):
    folder, npz, _ = new_data
    np.savez(tmp_path / "nokey.npz", other=np.zeros(3))
    (tmp_path / "corrupt.npz").write_bytes(b"PK not a zip")
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 28, 28), np.uint8))
    monkeypatch.chdir(tmp_path)  # inputs named relative to here, read elsewhere by their absolute paths
    inputs = [folder.name, npz.name, "nokey.npz", "corrupt.npz", "empty.npz"]
    sources = list_sources(inputs)
    assert all(Path(s.path).is_absolute() for s in sources)
    monkeypatch.chdir(folder)
    got = list(read_sources(sources))
    monkeypatch.chdir(tmp_path)
    expected = list(expand_inputs(inputs))
    assert [s.name for s in sources] == [i.name for i in expected] == [i.name for i in got]
    assert len(got) == 7 + 4 + 2 and sum(i.error is not None for i in got) == 3
    for a, b in zip(expected, got, strict=True):
        assert (a.error, a.notes) == (b.error, b.notes)
        assert (a.sample is None and b.sample is None) or np.array_equal(a.sample, b.sample)
    np.savez(npz, images=np.zeros((2, 28, 28), np.uint8))  # the file changed after it was listed
    late = {i.name: i for i in read_sources(sources)}
    assert late[f"{npz.name}#1"].error is None and "changed since it was listed" in late[f"{npz.name}#3"].error


def test_one_writer_puts_rows_in_a_file_or_a_stream(tmp_path):
    rows = [{"input": "a.png", "score": 1.5, "decision": "ood", "ood": True, "percentile": 99.0, "error": "",
             "adapted": "RGB -> gray"},
            {"input": "b.png", "score": None, "decision": "error", "ood": None, "percentile": None,
             "error": "not an image", "adapted": ""}]
    for fmt, suffix in (("csv", ".csv"), ("jsonl", ".jsonl")):
        to_file = write_scores(iter(rows), tmp_path / f"s{suffix}")  # the format from the suffix
        stream = io.StringIO()
        to_stream = write_scores(iter(rows), stream, fmt)
        assert stream.getvalue() == (tmp_path / f"s{suffix}").read_bytes().decode()
        assert is_scores_file(tmp_path / f"s{suffix}")
        for summary in (to_file, to_stream):
            assert (summary.rows, summary.flagged, summary.errors, summary.adapted) == (2, 1, 1, 1)
        assert to_file.out == tmp_path / f"s{suffix}" and to_stream.out is None
    first = stream.getvalue().splitlines()[0]
    assert list(json.loads(first)) == list(FIELDS)
    default = io.StringIO()
    write_scores(rows, default)  # a stream has no suffix: csv
    assert default.getvalue().splitlines()[0] == ",".join(FIELDS)
    assert write_scores(iter(rows), None).rows == 2  # counted only


def test_rows_go_to_parquet_typed_and_the_file_is_known_as_flowoods(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"input": f"{i}.png", "score": 0.5 + i, "decision": "in", "ood": False, "percentile": 10.0, "error": "",
             "adapted": ""} for i in range(5)]
    rows.insert(2, {"input": "bad.png", "score": None, "decision": "error", "ood": None, "percentile": None,
                    "error": "not an image", "adapted": ""})
    summary = write_scores(iter(rows), tmp_path / "s.parquet")  # the format from the suffix
    table = pq.read_table(tmp_path / "s.parquet")
    assert table.column_names == list(FIELDS) and table.to_pylist() == rows
    assert str(table.schema.field("score").type) == "double" and str(table.schema.field("ood").type) == "bool"
    assert (summary.rows, summary.errors) == (6, 1) and is_scores_file(tmp_path / "s.parquet")
    write_scores(iter(rows), tmp_path / "by-format.out", "parquet")
    assert pq.read_table(tmp_path / "by-format.out").to_pylist() == rows
    write_scores(iter([]), tmp_path / "empty.parquet")  # no rows: the columns still
    assert pq.read_table(tmp_path / "empty.parquet").column_names == list(FIELDS)
    pq.write_table(pq.read_table(tmp_path / "s.parquet").drop_columns(["adapted"]), tmp_path / "other.parquet")
    assert not is_scores_file(tmp_path / "other.parquet")  # another table: not to be replaced
    with pytest.raises(ConfigError, match="not to a stream"):
        write_scores(iter(rows), io.StringIO(), "parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # pyarrow not installed
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        write_scores(iter(rows), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_fit_score_and_write_rows(trained_checkpoint, new_data, tmp_path):
    folder, npz, _ = new_data
    detector = fit_detector(trained_checkpoint, tmp_path / "detector.pt", score="complexity", fpr=0.05, fit_samples=400)
    assert OODDetector.load(tmp_path / "detector.pt").threshold_ == pytest.approx(detector.threshold_)
    summary = write_scores(score_inputs(detector, [str(folder), str(npz)], batch_size=3, progress=False),
                           tmp_path / "scores.csv")
    rows = list(csv.DictReader(summary.out.read_text().splitlines()))
    assert summary.rows == len(rows) == 11 and summary.errors == 1
    by_name = {r["input"]: r for r in rows}
    assert by_name[str(folder / "broken.png")]["decision"] == "error"
    mnist_rows = [r for n, r in by_name.items() if "mnist" in n]
    assert sum(r["decision"] == "ood" for r in mnist_rows) >= 3  # MNIST flagged by the complexity score
    assert all(0 <= float(r["percentile"]) <= 100 for r in rows if r["percentile"])
    inputs = [str(folder), str(npz)]
    order = [item.name for item in expand_inputs(inputs)]
    assert [r["input"] for r in rows] == order  # the inputs' order, the unreadable one where it stands
    for batch_size in (1, 256):
        again = list(score_inputs(detector, inputs, batch_size=batch_size, progress=False))
        assert [r["input"] for r in again] == order
        assert [r["decision"] for r in again] == [r["decision"] for r in rows]


def test_the_cli_fits_and_scores_and_exits_by_errors_only(trained_checkpoint, new_data, tmp_path, capsys):
    folder, npz, _ = new_data
    assert main(["detector", "fit", "--checkpoint", str(trained_checkpoint), "--score", "likelihood", "--fpr", "0.1",
                 "--fit_samples", "300", "--out", str(tmp_path / "d.pt")]) == 0
    clean = tmp_path / "clean"
    clean.mkdir()
    for p in folder.glob("mnist*.png"):
        (clean / p.name).write_bytes(p.read_bytes())
    assert main(["score", "--detector", str(tmp_path / "d.pt"), str(clean), str(npz), "--out",
                 str(tmp_path / "s.jsonl"), "--no_progress"]) == 0  # OOD decisions are results, not errors
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["decision"] for r in rows} <= {"in", "ood"}
    assert main(["score", "--detector", str(tmp_path / "d.pt"), str(folder), "--out", str(tmp_path / "s.jsonl"),
                 "--no_progress"]) == 2  # an earlier output is not replaced without --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert main(["score", "--detector", str(tmp_path / "d.pt"), str(folder), "--out", str(tmp_path / "s.jsonl"),
                 "--overwrite", "--no_progress"]) == 1  # broken.png could not be scored
    capsys.readouterr()
    assert main(["score", "--detector", str(tmp_path / "d.pt"), str(clean), "--out", "-", "--no_progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "input,score,decision,ood,percentile,error,adapted"
    torch.save({"a": 1}, tmp_path / "foreign.pt")
    assert main(["score", "--detector", str(tmp_path / "foreign.pt"), str(clean), "--out", "-"]) == 2
