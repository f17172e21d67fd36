"""metrics.json's typed schema (flowood.evaluation.metrics_file): a file round-trips exactly, optional keys stay absent,
and a broken file is refused with the file and the key named. Round trips of real evaluations are in test_evaluate,
test_compare, tests/data/test_openood and tests/deploy/test_select."""

from __future__ import annotations

import json

import pytest

from flowood.errors import DataError
from flowood.evaluation.metrics_file import (
    DetectorMetrics,
    InDistribution,
    Metrics,
    OODSet,
    Provenance,
    RankedDetector,
    ScoreDetection,
    ScoreMean,
)

DETECTION = {"auroc": 0.25, "aupr_in": 0.5, "aupr_out": 0.375, "fpr95": 0.875, "detection_accuracy": 0.625}


def _metrics(bootstrap: bool = False) -> Metrics:
    ci = {f"{k}_ci": [v - 0.125, v + 0.125] for k, v in DETECTION.items()} if bootstrap else {}
    ood = OODSet(n=3, source="noise", original_shape=[1, 8, 8], dataset="noise", bpd_mean=9.5, bpd_std=0.5,
                 aupr=0.375, share_more_likely_than_median_in_dist=0.0, **DETECTION, **ci,
                 scores={"likelihood": ScoreDetection(**DETECTION, **ci, mean=9.5)})
    ind = InDistribution(name="digits", split="test", n=4, source="sklearn", original_shape=[1, 8, 8],
                         dataset="digits", bpd_mean=2.5, bpd_std=0.25, scores={"likelihood": ScoreMean(mean=2.5)})
    provenance = Provenance(
        checkpoint="f.pt", checkpoint_sha256=None, flow="RealNVP", flow_config={"flow": "RealNVP"},
        trained_by_flowood="0.1", flowood_version="0.1", torch_version="2", numpy_version="1", python="3.11",
        platform="linux", device="cpu", precision="fp32", seed=0, backend="torch", engine_parity=None, max_samples=None,
        dequantization="uniform", data_root=None, typicality_batch=1, fit_samples=0, ensemble=[], background=None,
        background_steps=None, options={"seed": 0})
    return Metrics(in_distribution=ind, ood={"noise": ood}, score="bits/dim", scores_computed=["likelihood"],
                   ranking=[RankedDetector(detector="likelihood", family="flow", needs="the flow", mean_auroc=0.25)],
                   provenance=provenance)


@pytest.mark.parametrize("bootstrap", [False, True])
def test_a_file_round_trips_and_optional_keys_stay_absent(tmp_path, bootstrap):
    m = _metrics(bootstrap)
    (tmp_path / "metrics.json").write_text(m.to_json())
    loaded = Metrics.from_json(tmp_path)
    assert loaded == m and loaded.to_json() == m.to_json()
    data = json.loads(m.to_json())
    assert "classifier" not in data and "benchmark" not in data  # absent, not null
    assert ("auroc_ci" in data["ood"]["noise"]) == bootstrap
    assert data["provenance"]["checkpoint_sha256"] is None  # a key with no value stays, as null
    assert loaded.ood["noise"].interval("auroc") == ([0.125, 0.375] if bootstrap else None)
    assert loaded.set_names == ["digits", "noise"]


def test_a_broken_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "metrics.json"
    good = _metrics().to_dict()

    def refused(data, match):
        path.write_text(json.dumps(data))
        with pytest.raises(DataError, match=match) as err:
            Metrics.from_json(path)
        assert str(path) in str(err.value)

    unknown = json.loads(json.dumps(good))
    unknown["ood"]["noise"]["scores"]["likelihood"]["aurc"] = 0.5
    refused(unknown, r"ood\['noise'\]\.scores\['likelihood'\] has unknown keys 'aurc'")
    missing = json.loads(json.dumps(good))
    del missing["in_distribution"]["bpd_mean"]
    refused(missing, "in_distribution lacks 'bpd_mean'")
    wrong = json.loads(json.dumps(good))
    wrong["ood"]["noise"]["n"] = "three"
    refused(wrong, r"ood\['noise'\]\.n should be int, not 'three'")
    refused({**good, "ood": []}, "ood should be an object, not list")
    refused([1, 2], "should be an object, not list")
    flag = json.loads(json.dumps(good))
    flag["ood"]["noise"]["auroc"] = True
    refused(flag, r"ood\['noise'\]\.auroc should be a number, not True")
    path.write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        Metrics.from_json(path)
    with pytest.raises(DataError, match="holds no metrics.json"):
        Metrics.from_json(tmp_path / "nothing")


def test_each_kind_of_evaluation_refuses_the_others_file():
    with pytest.raises(DataError, match="DetectorMetrics schema: the top level has unknown keys 'scores_computed'"):
        DetectorMetrics.from_json(_metrics().to_dict())
    detector_file = {"detector": "knn", "threshold": 1.0, "fpr": 0.05, "in_distribution": {}, "ood": {}, "score": "",
                     "validation_sets_evaluated": [], "provenance": {}}
    with pytest.raises(DataError, match="Metrics schema: the top level has unknown keys 'detector', 'threshold'"):
        Metrics.from_json(detector_file)


def test_a_file_of_an_earlier_release_reads_with_what_its_missing_keys_meant(tmp_path):
    """Files written before metrics.json recorded the backend, the engine parity, the ranking and the data behind
    each set still load (flowood compare reads them), the missing keys standing in as those releases meant."""
    data = _metrics().to_dict()
    del data["ranking"], data["provenance"]["backend"], data["provenance"]["engine_parity"]
    del data["in_distribution"]["dataset"], data["ood"]["noise"]["dataset"]
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    m = Metrics.from_json(tmp_path / "metrics.json")
    assert m.ranking == [] and m.provenance.backend == "torch" and m.provenance.engine_parity is None
    assert m.in_distribution.dataset == "digits" and m.ood["noise"].dataset is None
