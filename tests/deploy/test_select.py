"""Choosing a detector (flowood.deploy.select) and evaluating a saved one (flowood.deploy.evaluate): every candidate
fitted on the same data and ranked on validation OOD sets with bootstrap intervals, the best saved with its
ranking; evaluation from images as `flowood score` runs it, with a warning for the sets it was chosen on."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from flowood.cli.main import main
from flowood.deploy import load_detector
from flowood.deploy.evaluate import evaluate_detector, load_set
from flowood.deploy.pipeline import DetectorPipeline, detector_info
from flowood.deploy.select import select_detector
from flowood.evaluation import DetectorMetrics
from flowood.ood.detector import OODDetector
from flowood.ood.metrics import ood_metrics
from flowood.options import ConfigError

pytest.importorskip("pytorch_ood")


@pytest.fixture(scope="module")
def tiny_flow_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text("flow: RealNVPTabular\nstandardize: false\nnum_coupling_layers: 2\nnum_hidden_units: 16\n"
                    "batch_size: 64\nmax_steps: 15\nsamples_every_n_epochs: 0\n")
    return str(path)


@pytest.fixture(scope="module")
def selected(embedded, trained_checkpoint, fashionmnist_npz, mnist_npz, tiny_flow_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("select") / "chosen.pt"
    result = select_detector(embedded["classifier"], out, [mnist_npz], checkpoint=trained_checkpoint,
                             dataset=fashionmnist_npz, flow_config=tiny_flow_config, bootstrap=50,
                             candidates=["mahalanobis", "knn", "msp", "flow:likelihood", "pixel:likelihood",
                                         "pixel:complexity"], progress=False)
    return result, out


def test_every_candidate_is_ranked_with_intervals_and_the_best_is_saved(selected, mnist_npz):
    result, out = selected
    ranking = result.ranking
    assert [r["detector"] for r in ranking] and len(ranking) == 6
    means = [r["mean_auroc"] for r in ranking]
    assert means == sorted(means, reverse=True) and result.chosen == ranking[0]["detector"]
    for row in ranking:
        cell = row["sets"][mnist_npz]
        assert cell["auroc_ci"][0] <= cell["auroc"] <= cell["auroc_ci"][1]
    families = {r["detector"]: r["family"] for r in ranking}
    assert families["pixel:likelihood"] == "flow on the pixels" and families["knn"] == "classifier"
    pixel = {r["detector"]: r["mean_auroc"] for r in ranking}
    assert pixel["pixel:likelihood"] < 0.5 < pixel["mahalanobis"]  # the paper's failure, and the detector that works
    loaded = load_detector(out)
    assert loaded.selection_["chosen"] == result.chosen and loaded.selection_["validation_sets"] == [mnist_npz]
    assert loaded.selection_["validation"][mnist_npz]["split"] == "train"  # the test split stays for evaluation
    assert isinstance(loaded, DetectorPipeline if ":" not in result.chosen or result.chosen.startswith("flow")
                      else OODDetector)
    page = out.with_name("chosen-selection.html").read_text()
    assert "(chosen)" in page and "optimistic" in page
    assert detector_info(out)["selection"]["chosen"] == result.chosen


def test_evaluating_on_a_validation_set_warns_and_other_sets_do_not(selected, mnist_npz, tmp_path):
    _, out = selected
    with pytest.warns(UserWarning, match="was a validation set of this detector's selection"):
        done = evaluate_detector(out, [mnist_npz, "noise"], out=tmp_path / "eval", progress=False, max_samples=100)
    assert done.metrics.validation_sets_evaluated == [mnist_npz]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_detector(out, ["noise"], progress=False, max_samples=100)
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "scores.png").is_file()


def test_a_named_method_is_saved_instead_of_the_best(embedded, fashionmnist_npz, mnist_npz, tmp_path):
    result = select_detector(embedded["classifier"], tmp_path / "d.pt", [mnist_npz, "noise"], dataset=fashionmnist_npz,
                             candidates=["mahalanobis", "energy"], method="energy", bootstrap=0, progress=False)
    assert result.chosen == "energy" and load_detector(tmp_path / "d.pt").method == "energy"
    flow = select_detector(embedded["classifier"], tmp_path / "f.pt", [mnist_npz], dataset=fashionmnist_npz,
                           candidates=["knn", "flow:likelihood"], feature_flow=str(embedded["flow"]), method="flow",
                           bootstrap=0, progress=False)
    assert flow.chosen == "flow:likelihood" and load_detector(tmp_path / "f.pt").score_name == "flow:likelihood"
    assert set(result.ranking[0]["sets"]) == {mnist_npz, "noise"}
    with pytest.raises(ConfigError, match="did you mean 'energy'"):
        select_detector(embedded["classifier"], tmp_path / "e.pt", [mnist_npz], dataset=fashionmnist_npz,
                        candidates=["enrgy"])
    with pytest.raises(ConfigError, match="needs a pixel flow"):
        select_detector(embedded["classifier"], tmp_path / "e.pt", [mnist_npz], dataset=fashionmnist_npz,
                        candidates=["pixel:likelihood"])
    with pytest.raises(ConfigError, match="not among the candidates"):
        select_detector(embedded["classifier"], tmp_path / "e.pt", [mnist_npz], dataset=fashionmnist_npz,
                        candidates=["knn"], method="vim")
    with pytest.raises(Exception, match="must differ"):
        select_detector(embedded["classifier"], tmp_path / "e.pt", [fashionmnist_npz], dataset=fashionmnist_npz)
    assert not (tmp_path / "e.pt").exists()


def test_a_detectors_evaluation_equals_its_scores_and_threshold(embedded, fashionmnist_npz, mnist_npz, tmp_path):
    from flowood.deploy import fit_detector

    detector = fit_detector(classifier=embedded["classifier"], out=tmp_path / "d.pt", method="knn",
                            dataset=fashionmnist_npz, progress=False)
    done = evaluate_detector(tmp_path / "d.pt", [mnist_npz], progress=False)
    inside, _ = load_set(fashionmnist_npz, "test", (1, 28, 28), None, None, 0)
    outside, _ = load_set(mnist_npz, "test", (1, 28, 28), None, None, 0)
    a, b = detector.anomaly_score(inside), detector.anomaly_score(outside)
    assert done.metrics.ood[mnist_npz].auroc == pytest.approx(ood_metrics(a, b)["auroc"])
    assert done.metrics.in_distribution.flagged == pytest.approx(np.mean(a > detector.threshold_))
    with pytest.raises(ConfigError, match="applies to evaluating a checkpoint"):
        evaluate_detector(tmp_path / "d.pt", [mnist_npz], scores=["likelihood"])


def test_the_command_line_selects_shows_and_evaluates(embedded, fashionmnist_npz, mnist_npz, tmp_path, capsys):
    assert main(["detector", "select", "--classifier", str(embedded["classifier"]), "--dataset", fashionmnist_npz,
                 "--ood", mnist_npz, "--candidates", "mahalanobis", "rmd", "--bootstrap", "20", "--out",
                 str(tmp_path / "d.pt"), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out and "(chosen)" in out and "evaluate it on others" in out
    assert main(["detector", "info", str(tmp_path / "d.pt")]) == 0
    assert "validation sets: " + mnist_npz in capsys.readouterr().out
    assert main(["evaluate", "--detector", str(tmp_path / "d.pt"), "--ood", "noise", "--max_samples", "50", "--out",
                 str(tmp_path / "eval"), "--no_progress"]) == 0
    assert "| noise |" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["detector"] in ("mahalanobis", "rmd") and metrics["ood"]["noise"]["n"] == 50
    assert DetectorMetrics.from_json(tmp_path / "eval").to_dict() == metrics


def test_candidates_the_validation_sets_cannot_tell_apart_are_marked():
    from flowood.deploy.select import mark_ties, ties_note

    def row(name, lo, hi):
        return {"detector": name, "sets": {"a": {"auroc_ci": [lo, hi]}, "b": {"auroc_ci": [lo, hi]}}}
    ranking = mark_ties([row("best", 0.95, 0.99), row("close", 0.93, 0.96), row("far", 0.80, 0.90)])
    assert [r["tied_with_best"] for r in ranking] == [False, True, False]
    assert ties_note({"ranking": ranking}).startswith("close is within the 95% intervals of best")
    ranking[1]["sets"]["b"]["auroc_ci"] = [0.90, 0.94]  # apart on one set: told apart
    assert not mark_ties(ranking)[1]["tied_with_best"] and ties_note({"ranking": ranking}) is None
    ranking[1]["sets"]["b"]["auroc_ci"] = [0.995, 0.999]  # clearly better on one set (the mean ranks it lower)
    assert not mark_ties(ranking)[1]["tied_with_best"] and ties_note({"ranking": ranking}) is None
    no_intervals = [{"detector": n, "sets": {"a": {"auroc_ci": None}}} for n in ("x", "y")]
    assert not any(r["tied_with_best"] for r in mark_ties(no_intervals))
