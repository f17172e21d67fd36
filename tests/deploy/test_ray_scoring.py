"""Batch scoring on Ray Data (flowood.deploy.ray_scoring): the rows `flowood score` makes, in its order, from a pool
of Ray workers; a worker that dies is retried, a job that cannot finish names the inputs not scored and writes
nothing. One local Ray instance (2 CPUs) serves the whole module."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from ray_faults import DyingScoreWorker

import flowood
from flowood.checkpoints import CheckpointError
from flowood.cli.main import main
from flowood.deploy import fit_detector, is_scores_file, load_detector, ray_scoring, score_files
from flowood.deploy.inputs import list_sources
from flowood.deploy.ray_scoring import RayOptions, RayScoringError, score_files_on_ray
from flowood.errors import DataError
from flowood.options import ConfigError

ray = pytest.importorskip("ray")  # the module needs nothing of Ray before this line
pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker runs the module: one local Ray instance

SRC = Path(flowood.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance for the module, its workers importing this flowood and tests/ray_faults.py; yields the
    folder that takes the files which make a :class:`ray_faults.DyingScoreWorker` die."""
    folder = tmp_path_factory.mktemp("faults")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
                                       "FLOWOOD_TEST_FAULTS": str(folder)}})
    yield folder
    ray.shutdown()


@pytest.fixture
def dying(local_ray, monkeypatch):
    """Workers that die as the files in the folder returned say."""
    monkeypatch.setattr(ray_scoring, "_ScoreWorker", DyingScoreWorker)
    return local_ray


@pytest.fixture(scope="module")
def detector_file(trained_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray-detector") / "detector.pt"
    fit_detector(trained_checkpoint, path, score="complexity", fpr=0.05, fit_samples=400)
    return path


@pytest.fixture
def inputs(new_data):
    """A folder (a broken PNG, a 16-bit and an RGB one among MNIST PNGs), an .npz, and a glob naming files again."""
    folder, npz, _ = new_data
    return [str(folder), str(npz), str(folder / "mnist*.png")]


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return list(csv.DictReader(path.read_text().splitlines()))


def _assert_same_rows(got: list[dict], expected: list[dict]) -> None:
    assert [r["input"] for r in got] == [r["input"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert list(a) == list(b)
        assert {k: a[k] for k in a if k != "score"} == {k: b[k] for k in b if k != "score"}
        if b["score"] in (None, ""):
            assert a["score"] == b["score"]
        else:
            assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-6)


def test_ray_writes_the_rows_flowood_score_writes(local_ray, detector_file, inputs, tmp_path):
    # each format against score_files: Parquet here, CSV through the command line, JSON Lines with a worker dying
    expected = score_files(detector_file, inputs, tmp_path / "local.parquet", batch_size=3, progress=False)
    got = score_files_on_ray(detector_file, inputs, tmp_path / "ray.parquet", batch_size=3, workers=2,
                             progress=False)
    assert (got.rows, got.flagged, got.errors, got.adapted) == (expected.rows, expected.flagged, expected.errors,
                                                                expected.adapted)
    assert got.rows == 7 + 4 + 4 and got.errors == 1 and got.out == tmp_path / "ray.parquet"
    _assert_same_rows(_read(got.out), _read(expected.out))


def test_the_cli_scores_on_ray(local_ray, detector_file, inputs, tmp_path, capsys):
    args = ["score", "--detector", str(detector_file), *inputs, "--out", str(tmp_path / "ray.csv"), "--no_progress",
            "--batch_size", "4"]
    assert main([*args, "--ray", "--workers", "1", "--cpus_per_worker", "1", "--retries", "1"]) == 1  # broken.png
    assert "scored 14 inputs" in capsys.readouterr().out
    expected = score_files(detector_file, inputs, tmp_path / "local.csv", progress=False)
    _assert_same_rows(_read(tmp_path / "ray.csv"), _read(expected.out))
    assert main([*args, "--ray"]) == 2  # an earlier output is replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--workers", "3"]) == 2  # a Ray option without --ray
    assert "--workers is for scoring on Ray: add --ray" in capsys.readouterr().err
    assert main([*args[:3], "--ray", *args[3:]]) == 2  # --ray took the folder for its address
    assert "is not a Ray address" in capsys.readouterr().err


def test_a_worker_that_dies_is_replaced_and_every_row_comes_once(dying, embedded, fashionmnist_npz, inputs,
                                                                   tmp_path):
    # the other family of detectors: a pipeline from images through a classifier's features to Mahalanobis
    fit_detector(classifier=embedded["classifier"], out=tmp_path / "features.pt", method="mahalanobis",
                 dataset=fashionmnist_npz, fit_samples=400, progress=False)
    (dying / "once").touch()
    got = score_files_on_ray(tmp_path / "features.pt", inputs, tmp_path / "ray.jsonl", RayOptions(workers=1, retries=2),
                             batch_size=1, progress=False)
    assert (dying / "once.taken").exists() and not (dying / "once").exists()  # a worker died
    # one sample at a time on both sides: float32 features of a batch of 2 differ from a batch of 1 by ~1e-6
    expected = score_files(tmp_path / "features.pt", inputs, tmp_path / "local.jsonl", batch_size=1, progress=False)
    assert got.rows == expected.rows == 15
    _assert_same_rows(_read(got.out), _read(expected.out))


def test_a_job_that_cannot_finish_names_the_inputs_not_scored_and_writes_nothing(dying, detector_file, inputs,
                                                                                 tmp_path):
    (dying / "always").touch()
    try:
        with pytest.raises(RayScoringError, match=r"inputs were not scored \(.*broken.png.*retries=0") as failed:
            score_files_on_ray(detector_file, inputs, tmp_path / "out" / "ray.parquet", workers=1, retries=0,
                               progress=False)
    finally:
        (dying / "always").unlink()
    names, left = [s.name for s in list_sources(inputs)], failed.value.not_scored
    assert left and left == names[len(names) - len(left):]  # the inputs after the last row that came back
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor a temporary one


def test_requests_that_cannot_run_are_refused_in_one_clear_error(local_ray, detector_file, inputs, tmp_path,
                                                                  monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        score_files_on_ray(tmp_path / "missing.pt", inputs, progress=False)
    with pytest.raises(ConfigError, match="save it first"):
        score_files_on_ray(load_detector(detector_file), inputs, progress=False)
    with pytest.raises(ConfigError, match="not a Ray address"):
        score_files_on_ray(detector_file, inputs, address="new_images/", progress=False)
    with pytest.raises(ConfigError, match="does not run through Ray Client"):
        score_files_on_ray(detector_file, inputs, address="ray://head:10001", progress=False)
    with pytest.raises(DataError, match="neither a file, a folder nor a pattern"):
        score_files_on_ray(detector_file, [*inputs, str(tmp_path / "nothing*.png")], progress=False)
    with pytest.raises(ConfigError, match="not to a stream"):
        score_files_on_ray(detector_file, inputs, sys.stdout, format="parquet", progress=False)
    (tmp_path / "no-images").mkdir()
    empty = score_files_on_ray(detector_file, [str(tmp_path / "no-images")], tmp_path / "none.csv", progress=False)
    assert empty.rows == 0 and _read(tmp_path / "none.csv") == [] and is_scores_file(tmp_path / "none.csv")
    torch.save({"a": 1}, tmp_path / "foreign.pt")  # refused on the workers, and said as they say it
    with pytest.raises(RayScoringError, match="15 of 15 inputs were not scored .*not a flowood detector"):
        score_files_on_ray(tmp_path / "foreign.pt", inputs, tmp_path / "s.csv", progress=False)
    assert not (tmp_path / "s.csv").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed: the module loads, a job says what to install
    spec = importlib.util.spec_from_file_location("ray_scoring_without_ray", ray_scoring.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    with pytest.raises(ConfigError, match=r"pip install 'flowood\[ray\]'"):
        score_files_on_ray(detector_file, inputs, progress=False)
