"""Choosing a detector for your own data: fit every detector flowood has on one classifier (and a pixel flow), rank
them on validation OOD sets you name, and save the best (or the one you name) with the ranking.

pytorch-ood and OpenOOD tune one detector's hyper-parameters on validation data; neither ranks detectors of
different families on a user's own data nor saves the fitted winner. ``flowood detector select`` does: every
classifier-based detector the classifier allows, a flow on its features (``flow:SCORE``; trained here unless
``feature_flow`` gives one) and, with a pixel flow's ``checkpoint``, that flow's scores (``pixel:SCORE``). Each is
fitted on the same in-distribution training images and calibrated on the same held-out ones
(:func:`~flowood.deploy.fit.split_fit_calibration`); each is scored on the same validation images of every OOD
set (their ``train`` split where the set has one, so the ``test`` split stays for evaluation); AUROC and FPR at 95%
TPR come with bootstrap intervals. Candidates are ranked by mean AUROC over the validation sets (ties: lower mean
FPR95); candidates whose AUROC interval overlaps the best's on every validation set are marked as tied with it: those
sets cannot tell them apart.

A validation set is a set the detector was chosen on: its numbers are optimistic. The detector file records the
validation sets, and ``flowood evaluate --detector`` warns when one of them is evaluated again.
"""

from __future__ import annotations

import dataclasses
import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowood.checkpoints import load_flow
from flowood.data import DatasetNotFoundError, adapt_images, canonical_name, dataset_inputs
from flowood.deploy.evaluate import load_set, score_in_batches
from flowood.deploy.fit import (
    DetectorOptions,
    PipelineData,
    check_extractor,
    feature_flow,
    load_images,
    pipeline_data,
    pipeline_provenance,
)
from flowood.deploy.pipeline import FEATURE_FLOW_SCORES, PARITY_IMAGES, DetectorPipeline, linear_head
from flowood.embed.extractors import FeatureExtractor, load_extractor
from flowood.errors import DataError, closest
from flowood.htmlpage import page
from flowood.ood.classifier import CLASSIFIER_DETECTORS, ClassifierOutputs, available_detectors
from flowood.ood.detector import OODDetector, is_detector_file
from flowood.ood.metrics import ood_metrics
from flowood.ood.scores import DEFAULT_SCORES, score_applies
from flowood.options import ConfigError, merge_options, option
from flowood.outputs import check_output_file, write_text_atomic
from flowood.runtime import resolve_device
from flowood.tables import Table

__all__ = ["SelectOptions", "SelectionResult", "select_detector", "selection_table", "FEATURE_FLOW_CANDIDATES",
           "mark_ties", "ties_note", "ranking_rows"]

#: the scores of a flow on the features that selection compares by default.
FEATURE_FLOW_CANDIDATES = ("flow:likelihood", "flow:typicality")


@dataclass
class SelectOptions:
    """How ``flowood detector select`` compares detectors: every field is an option."""

    detector: DetectorOptions = option(default_factory=DetectorOptions, help="how each candidate is fitted (their "
                                       "options are given by their own names)", flag=False)
    candidates: list[str] | None = option(None, lambda: "detectors to compare: classifier-based names "
                                          f"({', '.join(CLASSIFIER_DETECTORS)}), flow:SCORE (a flow on the features), "
                                          "pixel:SCORE (the scores of the pixel flow given as `checkpoint`) "
                                          "(default: every one available)", metavar="NAME")
    feature_flow: str | None = option(None, "a flow already trained on the classifier's features, for the flow:SCORE "
                                      "candidates (default: one is trained here, see `flow_config`)", metavar="CKPT")
    validation_samples: int | None = option(2000, "validation images per OOD set (a seeded subset)", minimum=1)
    bootstrap: int = option(200, "bootstrap resamples for the 95% intervals of AUROC and FPR95 (0: none)", minimum=0)


@dataclass
class SelectionResult:
    """What :func:`select_detector` did.

    Attributes:
        detector: the saved (chosen) detector. ranking: every candidate's row, best first. chosen: its name.
        page: the HTML page of the ranking. out: the detector file.
    """

    detector: Any
    ranking: list[dict[str, Any]]
    chosen: str
    page: Path | None
    out: Path | None


def _family(name: str) -> tuple[str, str]:
    if name.startswith("flow:"):
        return "flow on the classifier's features", "features (the flow learns them)"
    if name.startswith("pixel:"):
        return "flow on the pixels", "the flow only (no classifier)"
    return "classifier", CLASSIFIER_DETECTORS[name].needs


def _default_candidates(extractor: FeatureExtractor, labels: bool, pixel_flow: Any) -> list[str]:
    names = available_detectors(extractor.head() is not None or extractor.gives_logits, labels,
                                has_logits=extractor.gives_logits)
    names += list(FEATURE_FLOW_CANDIDATES)
    if pixel_flow is not None:
        names += [f"pixel:{s}" for s in DEFAULT_SCORES if score_applies(s, pixel_flow)]
    return names


def _check_names(names: list[str], pixel: bool) -> None:
    known = [*CLASSIFIER_DETECTORS, *[f"flow:{s}" for s in FEATURE_FLOW_SCORES],
             *[f"pixel:{s}" for s in DEFAULT_SCORES]]
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown candidate {name!r}{closest(name, known)}; choose from {', '.join(known)}")
        if name.startswith("pixel:") and not pixel:
            raise ConfigError(f"{name} needs a pixel flow: pass its `checkpoint`")


@dataclass
class _Validation:
    """Validation images of the OOD sets: in the extractor's shape, their features, and in the pixel flow's shape."""

    outputs: dict[str, ClassifierOutputs]
    pixels: dict[str, torch.Tensor]
    info: dict[str, dict[str, Any]]


def _load_validation(sets: list[str], base: DetectorPipeline, pixel_shape: tuple[int, ...] | None,
                     o: SelectOptions, progress: bool) -> _Validation:
    d = o.detector
    outputs, pixels, info = {}, {}, {}
    for name in sets:
        split = "train"  # the test split stays for evaluation; a set without a training split lends its test split
        try:
            images, info[name] = load_set(name, split, base.input_shape, d.data_root, o.validation_samples, d.seed)
        except DatasetNotFoundError:
            split = "test"
            images, info[name] = load_set(name, split, base.input_shape, d.data_root, o.validation_samples, d.seed)
        info[name]["split"] = split
        outputs[name] = base.extract(images, progress, f"features ({name})")
        if pixel_shape is not None:
            pixels[name] = load_set(name, split, pixel_shape, d.data_root, o.validation_samples, d.seed)[0]
    return _Validation(outputs, pixels, info)


def _row(name: str, inside: np.ndarray, outside: dict[str, np.ndarray], threshold: float, o: SelectOptions
         ) -> dict[str, Any]:
    family, needs = _family(name)
    per_set = {}
    for set_name, scores in outside.items():
        m = ood_metrics(inside, scores, bootstrap=o.bootstrap, seed=o.detector.seed)
        per_set[set_name] = {"auroc": m["auroc"], "fpr95": m["fpr95"], "auroc_ci": m.get("auroc_ci"),
                             "fpr95_ci": m.get("fpr95_ci"), "flagged": float(np.mean(scores > threshold))}
    return {"detector": name, "family": family, "needs": needs, "sets": per_set,
            "mean_auroc": float(np.mean([s["auroc"] for s in per_set.values()])),
            "mean_fpr95": float(np.mean([s["fpr95"] for s in per_set.values()]))}


def _fit_feature_candidates(names: list[str], extractor: FeatureExtractor, data: PipelineData,
                            train: ClassifierOutputs, calibration: ClassifierOutputs, flow: Any,
                            validation: _Validation, o: SelectOptions) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    d = o.detector
    fitted, rows = {}, []
    for name in names:
        method, _, score = name.partition(":")
        pipeline = DetectorPipeline(extractor, method, d.fpr, d.holdout, flow=flow if method == "flow" else None,
                                    score=score or "likelihood", score_options={"seed": d.seed},
                                    batch_size=d.batch_size, seed=d.seed)
        pipeline.fit_outputs(train, data.labels, calibration)
        outside = {s: pipeline.score_outputs(x) for s, x in validation.outputs.items()}
        rows.append(_row(name, pipeline.reference_scores_, outside, pipeline.threshold_, o))
        fitted[name] = pipeline
    return fitted, rows


def _fit_pixel_candidates(names: list[str], checkpoint: str | Path, images: Any, data: PipelineData,
                          validation: _Validation, o: SelectOptions, progress: bool
                          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    d = o.detector
    loaded = load_flow(checkpoint)
    flow = loaded.flow.to(resolve_device(d.device)).eval()
    shape = tuple(flow.input_shape)
    fit_images = adapt_images(images.data[data.fit_index], shape)
    cal_images = adapt_images(images.data[data.calibration_index], shape)
    fitted, rows = {}, []
    for name in names:
        score = name.partition(":")[2]
        detector = OODDetector(flow, score, d.fpr, d.holdout, {"typicality_batch": 1, "seed": d.seed})
        detector.fit(fit_images, X_calibration=cal_images)
        detector.provenance_ = {"dataset": d.dataset, "fit_samples": len(fit_images), "seed": d.seed,
                                "calibration_samples": len(cal_images),
                                "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": loaded.sha256}}
        outside = {s: score_in_batches(detector, x, 512, progress, f"{name} ({s})")
                   for s, x in validation.pixels.items()}
        rows.append(_row(name, detector.reference_scores_, outside, detector.threshold_, o))
        fitted[name] = detector
    return fitted, rows


@dataclass
class _Request:
    """A checked selection request: the validation sets, the files it reads and writes."""

    sets: list[str]
    inputs: list[Any]
    out: Path | None
    page: Path | None


def _check_request(classifier: Any, out: Any, ood: list[str], o: SelectOptions, checkpoint: Any,
                   overwrite: bool) -> _Request:
    d = o.detector
    if not d.dataset:
        raise ConfigError("selection needs the in-distribution images: pass `dataset`")
    if not ood:
        raise DataError("selection needs validation OOD sets: pass `ood`, e.g. ['mnist']")
    sets = [canonical_name(n) for n in ood]
    if canonical_name(d.dataset) in sets or len(set(sets)) != len(sets):
        raise DataError(f"the validation sets must differ from each other and from {d.dataset}")
    if o.candidates:
        _check_names(o.candidates, checkpoint is not None)
    page = Path(out).with_name(f"{Path(out).stem}-selection.html") if out is not None else None
    inputs = [classifier, checkpoint, o.feature_flow, *dataset_inputs([d.dataset, *sets], d.data_root)]
    if out is not None:
        check_output_file(out, is_detector_file, inputs, overwrite)
        check_output_file(page, _is_selection_page, inputs, overwrite)
    return _Request(sets, inputs, Path(out) if out is not None else None, page)


def _method(d: DetectorOptions) -> str | None:
    """The candidate ``method`` names: ``flow`` with ``score`` is ``flow:SCORE``."""
    return f"flow:{d.score}" if d.method == "flow" else d.method


def _candidate_names(o: SelectOptions, extractor: FeatureExtractor, data: PipelineData, pixel_flow: Any) -> list[str]:
    names = list(o.candidates or _default_candidates(extractor, data.labels is not None, pixel_flow))
    method = _method(o.detector)
    if method is not None and method not in names:
        raise ConfigError(f"`method` {method!r} is not among the candidates ({', '.join(names)})")
    for name in names:
        if name in CLASSIFIER_DETECTORS:
            check_extractor(extractor, name)
    return names


def _drop_headless(names: list[str], extractor: FeatureExtractor, train: ClassifierOutputs, o: SelectOptions
                   ) -> list[str]:
    """Without a known last linear layer (a model whose logits are not a linear function of its features), the
    detectors that need it leave the default candidates; named ones are refused."""
    if extractor.head() is not None or linear_head(train)[0] is not None:
        return names
    headless = [n for n in names if n in CLASSIFIER_DETECTORS and CLASSIFIER_DETECTORS[n].uses("head")]
    named = [n for n in headless if n in (o.candidates or []) or n == _method(o.detector)]
    if named:
        raise ConfigError(f"{', '.join(named)} need the classifier's last linear layer, and this model's logits are "
                          "not a linear function of its features")
    return [n for n in names if n not in headless]


def select_detector(classifier: str | Path, out: str | Path | None, ood: list[str],
                    options: SelectOptions | None = None, *, checkpoint: str | Path | None = None,
                    progress: bool = True, overwrite: bool = False, **option_values: Any) -> SelectionResult:
    """Fit every candidate detector, rank them on validation OOD sets, save the best (or ``method``).

    Args:
        classifier: the classifier whose features the candidates use (see :func:`~flowood.deploy.fit.fit_pipeline`).
        out: the detector file to write (None: nothing is written); the ranking's page goes beside it
            (``<stem>-selection.html``).
        ood: the validation OOD sets.
        options: a :class:`SelectOptions` (``detector`` holds how each is fitted: ``dataset``, ``fpr``, ...).
        checkpoint: a pixel flow, whose scores join the candidates.
        progress: show progress bars. overwrite: replace an earlier detector file and page.
        **option_values: any field of :class:`SelectOptions` or :class:`~flowood.deploy.fit.DetectorOptions`.

    Returns:
        A :class:`SelectionResult`.

    Raises:
        ConfigError, DataError, OutputError: named in the message, before any model is fitted.
    """
    o = merge_options(SelectOptions, options, option_values)
    d = o.detector
    request = _check_request(classifier, out, ood, o, checkpoint, overwrite)
    start = time.time()
    images = load_images(d.dataset, d.data_root)
    extractor = load_extractor(classifier, images.sample_shape, d.backbone, d.image_size)
    extractor = extractor.to(resolve_device(d.device)).eval()
    data = pipeline_data(images, d.dataset, extractor.input_shape, d.fit_samples, d.holdout, d.seed)
    pixel_flow = load_flow(checkpoint).flow if checkpoint is not None else None
    names = _candidate_names(o, extractor, data, pixel_flow)
    base = DetectorPipeline(extractor, batch_size=d.batch_size)
    train = base.extract(data.fit, progress, "features (fit)")
    calibration = base.extract(data.calibration, progress, "features (calibration)")
    names = _drop_headless(names, extractor, train, o)
    validation = _load_validation(request.sets, base, tuple(pixel_flow.input_shape) if pixel_flow else None, o,
                                  progress)
    flow, flow_info = None, {}
    if any(n.startswith("flow:") for n in names):
        flow, flow_info = feature_flow(o.feature_flow, train, calibration, d, overwrite, progress, request.inputs)
        flow.to(resolve_device(d.device))
    feature_names = [n for n in names if not n.startswith("pixel:")]
    fitted, rows = _fit_feature_candidates(feature_names, extractor, data, train, calibration, flow, validation, o)
    if pixel_flow is not None:
        more, more_rows = _fit_pixel_candidates([n for n in names if n.startswith("pixel:")], checkpoint, images,
                                                data, validation, o, progress)
        fitted.update(more)
        rows += more_rows
    ranking = mark_ties(sorted(rows, key=lambda r: (-r["mean_auroc"], r["mean_fpr95"])))
    chosen = _method(d) or ranking[0]["detector"]
    selection = {"validation_sets": request.sets, "validation": validation.info, "ranking": ranking,
                 "chosen": chosen, "chosen_by": "method" if d.method else "best mean AUROC", "bootstrap": o.bootstrap,
                 "selected": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": round((time.time() - start) / 60, 2)}
    detector = fitted[chosen]
    _keep(detector, selection, request, d, data, extractor, flow_info)
    return SelectionResult(detector, ranking, chosen, request.page, request.out)


def _keep(detector: Any, selection: dict[str, Any], request: _Request, d: DetectorOptions, data: PipelineData,
          extractor: FeatureExtractor, flow_info: dict[str, Any]) -> None:
    """Record the selection in the chosen detector; save it and the ranking's page."""
    detector.selection_ = selection
    if isinstance(detector, DetectorPipeline):
        detector.provenance_.update(pipeline_provenance(dataclasses.replace(d, method=detector.method), data,
                                                        extractor, flow_info if detector.method == "flow" else {}))
    if request.out is None:
        return
    write_text_atomic(request.page, selection_page(selection, d.dataset, str(request.out)))
    try:
        if isinstance(detector, DetectorPipeline):
            detector.save(request.out, overwrite=True, inputs=request.inputs,
                          parity_images=data.calibration[:PARITY_IMAGES].clone())
        else:
            detector.save(request.out, overwrite=True)
    except BaseException:
        request.page.unlink(missing_ok=True)  # a page without its detector would describe nothing
        raise


def mark_ties(ranking: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the candidates the validation sets cannot tell from the best: on every set, their AUROC interval overlaps
    the best's (``tied_with_best``; False without bootstrap intervals)."""
    best = ranking[0]["sets"]
    for row in ranking:
        row["tied_with_best"] = row is not ranking[0] and all(
            row["sets"][s]["auroc_ci"] is not None and best[s]["auroc_ci"] is not None
            and row["sets"][s]["auroc_ci"][1] >= best[s]["auroc_ci"][0]
            and row["sets"][s]["auroc_ci"][0] <= best[s]["auroc_ci"][1] for s in best)
    return ranking


def ties_note(selection: dict[str, Any]) -> str | None:
    """A sentence naming the candidates tied with the best, or None."""
    tied = [r["detector"] for r in selection["ranking"] if r.get("tied_with_best")]
    if not tied:
        return None
    return (f"{', '.join(tied)} {'is' if len(tied) == 1 else 'are'} within the 95% intervals of "
            f"{selection['ranking'][0]['detector']} on every validation set: these sets cannot tell them apart, and "
            "the order between them may not hold on other OOD data; validate on more sets, or prefer the detector "
            "known to generalise")


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def ranking_rows(selection: dict[str, Any], needs: bool = False) -> Table:
    """The ranking as a table: rank, detector (chosen and tied ones marked), family, (what it needs,) AUROC and FPR95
    with 95% intervals on every validation set, and the means."""
    sets = selection["validation_sets"]
    head = ["rank", "detector", "family", *(["needs"] if needs else []), *[f"AUROC {s}" for s in sets],
            *[f"FPR95 {s}" for s in sets], "mean AUROC", "mean FPR95"]
    rows = []
    for i, r in enumerate(selection["ranking"], 1):
        mark = (" (chosen)" if r["detector"] == selection["chosen"] else "") + (" (tied)" if r.get("tied_with_best")
                                                                                 else "")
        rows.append([str(i), f"{r['detector']}{mark}", r["family"], *([r["needs"]] if needs else []),
                     *[f"{r['sets'][s]['auroc']:.3f}{_interval(r['sets'][s]['auroc_ci'])}" for s in sets],
                     *[f"{r['sets'][s]['fpr95']:.3f}{_interval(r['sets'][s]['fpr95_ci'])}" for s in sets],
                     f"{r['mean_auroc']:.3f}", f"{r['mean_fpr95']:.3f}"])
    text = "rlll" if needs else "rll"  # the rank right; the detector, its family (and what it needs) left
    return Table(head, rows, align=text + "r" * (len(head) - len(text)))


def selection_table(selection: dict[str, Any]) -> str:
    """The ranking as Markdown (:func:`ranking_rows`)."""
    return ranking_rows(selection).markdown()


def selection_page(selection: dict[str, Any], dataset: str, out: str) -> str:
    """A small HTML page of the ranking."""
    splits = ", ".join(f"{s}: {v['n']} images of its {v['split']} split" for s, v in selection["validation"].items())
    body = [f"<h1>Detector selection on {html.escape(dataset)}</h1>",
            f"<p class='note'>Every candidate fitted on the same in-distribution training images, calibrated on the "
            f"same held-out ones, and ranked by mean AUROC over the validation OOD sets ({html.escape(splits)}); "
            f"95% bootstrap intervals ({selection['bootstrap']} resamples). Chosen: "
            f"<b>{html.escape(selection['chosen'])}</b> ({html.escape(selection['chosen_by'])}), saved as "
            f"{html.escape(out)}.</p>",
            ranking_rows(selection, needs=True).html(),
            *([f"<p class='note'>Tied: {html.escape(ties_note(selection))}.</p>"] if ties_note(selection) else []),
            "<p class='bad'>These are the sets the detector was chosen on: its numbers here are optimistic. Judge it "
            "on other OOD sets (flowood evaluate --detector warns when a validation set is evaluated again).</p>"]
    return page("flowood detector selection", body)


def _is_selection_page(path: Path) -> bool:
    try:
        return "<title>flowood detector selection</title>" in path.read_text(encoding="utf-8", errors="ignore")[:400]
    except OSError:
        return False
