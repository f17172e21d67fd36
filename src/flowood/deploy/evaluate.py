"""How well a saved detector does: its scores of the in-distribution test split and of named OOD sets, AUROC, AUPR,
FPR at 95% TPR, and what its threshold flags of each, as ``flowood evaluate --detector D`` reports them.

Where :func:`flowood.evaluation.evaluate` compares every score of a flow, this evaluates the one detector a user
deploys (any family: a flow on the inputs, a flow on a classifier's features, a classifier-based detector) exactly as
``flowood score`` runs it, from images, on PyTorch or an engine. A set the detector was *selected* on (``flowood
detector select``) gives optimistic numbers; it is named in a warning.
"""

from __future__ import annotations

import contextlib
import html
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flowood import __version__
from flowood.data import adapt_images, canonical_name, dataset_inputs, load_dataset
from flowood.deploy.inputs import describe_image
from flowood.deploy.load import load_detector
from flowood.errors import DataError
from flowood.evaluation.evaluate import EvaluateOptions
from flowood.evaluation.figures import score_histogram
from flowood.evaluation.metrics_file import (
    METRICS_FILE,
    DetectorInDistribution,
    DetectorMetrics,
    DetectorOODSet,
    DetectorProvenance,
)
from flowood.htmlpage import figure, page
from flowood.ood.metrics import ood_metrics
from flowood.options import ConfigError, default_of, merge_options, options_of, to_mapping
from flowood.outputs import atomic_write, open_output_folder, write_text_atomic
from flowood.tables import Table

__all__ = ["evaluate_detector", "DetectorEvaluation", "detector_metrics_table", "score_in_batches", "load_set"]

#: options of ``flowood evaluate`` that belong to a checkpoint's evaluation (a detector has its own score).
_CHECKPOINT_ONLY = ("scores", "ensemble", "background", "background_steps", "typicality_batch", "fit_samples",
                    "compile", "benchmark", "detectors", "precision")


@dataclass
class DetectorEvaluation:
    """What :func:`evaluate_detector` produced.

    Attributes:
        metrics: the contents of metrics.json, typed (:class:`~flowood.evaluation.metrics_file.DetectorMetrics`).
        scores: the anomaly scores of every set. out: the folder written.
    """

    metrics: DetectorMetrics
    scores: dict[str, np.ndarray]
    out: Path | None


def score_in_batches(detector: Any, data: torch.Tensor, batch_size: int = 512, progress: bool = False,
                     desc: str = "scoring") -> np.ndarray:
    """The detector's anomaly scores of ``data``, ``batch_size`` at a time."""
    parts = [detector.anomaly_score(data[i:i + batch_size])
             for i in tqdm(range(0, len(data), batch_size), desc=desc, unit="batch", disable=not progress,
                           leave=False)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def load_set(name: str, split: str, shape: tuple[int, ...], root: str | None, max_samples: int | None, seed: int
             ) -> tuple[torch.Tensor, dict[str, Any]]:
    """One set's ``split`` (a seeded subset of ``max_samples``) in the detector's input ``shape``, and what it is
    (size, source, original shape, how it was adapted).

    Raises:
        DataError: vectors for a detector on images, or the other way round.
    """
    ds = load_dataset(name, split, root, shape=shape).take(max_samples, seed=seed)
    info = {"n": len(ds), "source": ds.source, "original_shape": list(ds.sample_shape), "adapted": None}
    if len(shape) == 3:
        if not ds.is_image:
            raise DataError(f"{name} holds vectors; this detector takes images {describe_image(shape)}")
        if tuple(ds.sample_shape) != tuple(shape):
            info["adapted"] = f"{describe_image(ds.sample_shape)} -> {describe_image(shape)}"
        return adapt_images(ds.data, tuple(shape)), info
    if ds.is_image or tuple(ds.sample_shape) != tuple(shape):
        raise DataError(f"{name} has samples of shape {tuple(ds.sample_shape)}; this detector takes vectors {shape}")
    return ds.data, info


def _refuse_checkpoint_options(o: EvaluateOptions) -> None:
    for given in (o, o.score_options):
        for f, _, _ in options_of(type(given)):
            if f.name in _CHECKPOINT_ONLY and getattr(given, f.name) != default_of(f):
                raise ConfigError(f"`{f.name}` applies to evaluating a checkpoint; a detector has its own score and "
                                  "fitted state (evaluate its flow's checkpoint to compare every score)")


def _validation_overlap(detector: Any, sets: list[str]) -> list[str]:
    """The OOD sets the detector was selected on (``flowood detector select``), among ``sets``."""
    selection = getattr(detector, "selection_", None) or {}
    validation = {canonical_name(s) for s in selection.get("validation_sets", [])}
    return [s for s in sets if s in validation]


def evaluate_detector(detector: Any, ood: list[str], out: str | Path | None = None,
                      options: EvaluateOptions | None = None, *, progress: bool = True, overwrite: bool = False,
                      **option_values: Any) -> DetectorEvaluation:
    """Score the in-distribution test split and each OOD set with a saved detector; compute metrics.

    Args:
        detector: a detector file (or export folder, with an engine ``backend``), or a fitted detector.
        ood: OOD data set names; images are adapted to the detector's input shape (and the adaptation recorded).
        out: folder for metrics.json, scores.npz, scores.png and report.html (None: write nothing).
        options: an :class:`~flowood.evaluation.EvaluateOptions`; ``dataset`` (default: the detector's own),
            ``max_samples``, ``batch_size``, ``device``, ``backend``, ``bootstrap``, ``seed`` and ``data_root`` apply.
        progress: show progress bars.
        overwrite: replace an earlier evaluation in ``out``.

    Raises:
        ConfigError: options that apply to a checkpoint only. DataError: no OOD sets, no in-distribution set known.
        OutputError: ``out`` is unsafe.
    """
    o = merge_options(EvaluateOptions, options, option_values)
    _refuse_checkpoint_options(o)
    path = Path(detector) if isinstance(detector, (str, Path)) else None
    fitted = load_detector(path, device=o.device, backend=o.backend) if path is not None else detector
    provenance = getattr(fitted, "provenance_", {}) or {}
    dataset = o.dataset or provenance.get("dataset")
    if not dataset:
        raise DataError("the detector does not say which data set it was fitted on; pass `dataset`")
    if not ood:
        raise DataError("no OOD data sets given; pass at least one, e.g. `ood=['mnist']`")
    sets = [canonical_name(n) for n in [dataset, *ood]]
    if len(set(sets)) != len(sets):
        raise DataError(f"data set names repeat: {[dataset, *ood]}")
    root = o.data_root or provenance.get("data_root")
    overlap = _validation_overlap(fitted, sets[1:])
    if overlap:
        warnings.warn(f"{', '.join(overlap)} {'was a validation set' if len(overlap) == 1 else 'were validation sets'} "
                      "of this detector's selection: its numbers there are optimistic; judge the detector on OOD sets "
                      "it was not chosen on", stacklevel=2)
    inputs = [path, *dataset_inputs(sets, root)]
    folder = (open_output_folder(out, "evaluate", inputs, overwrite=overwrite) if out is not None
              else contextlib.nullcontext())
    with folder:
        scores, info = {}, {}
        for name in sets:
            data, info[name] = load_set(name, "test", tuple(fitted.input_shape), root, o.max_samples, o.seed)
            scores[name] = score_in_batches(fitted, data, o.batch_size, progress, name)
        metrics = _summary(fitted, sets, scores, info, o, path, overlap)
        if out is not None:
            _write(folder.path, metrics, scores)
    return DetectorEvaluation(metrics, scores, folder.path if out is not None else None)


def _summary(detector: Any, sets: list[str], scores: dict[str, np.ndarray], info: dict[str, dict[str, Any]],
             o: EvaluateOptions, path: Path | None, overlap: list[str]) -> DetectorMetrics:
    ind = sets[0]
    threshold = float(detector.threshold_)

    def scored(name: str) -> dict[str, Any]:
        return {**info[name], "score_mean": float(scores[name].mean()), "score_std": float(scores[name].std()),
                "flagged": float(np.mean(scores[name] > threshold))}

    ood = {name: DetectorOODSet(**scored(name), **ood_metrics(scores[ind], scores[name], bootstrap=o.bootstrap,
                                                              seed=o.seed))
           for name in sets[1:]}
    provenance = DetectorProvenance(detector=str(path) if path else "a detector in memory",
                                    fitted=getattr(detector, "provenance_", {}).get("fitted"),
                                    flowood_version=__version__, evaluated=time.strftime("%Y-%m-%d %H:%M:%S"),
                                    backend=o.backend, options=to_mapping(o))
    return DetectorMetrics(detector=detector.score_name, threshold=threshold, fpr=float(detector.fpr),
                           in_distribution=DetectorInDistribution(name=ind, split="test", **scored(ind)), ood=ood,
                           score="the detector's anomaly score; higher means more OOD; OOD is the positive class",
                           validation_sets_evaluated=overlap, provenance=provenance)


def detector_metrics_table(metrics: DetectorMetrics) -> str:
    """The evaluation as a Markdown table, one row per set: size, AUROC, AUPR, FPR@95%TPR, and the share the
    detector's threshold flags (for the in-distribution test split: its real false-positive rate)."""
    ind = metrics.in_distribution
    rows = [[f"{ind.name} (in-dist, test)", str(ind.n), "–", "–", "–", f"{ind.flagged:.3f}"]]
    rows += [[name + (f" (adapted: {m.adapted})" if m.adapted else ""), str(m.n), f"{m.auroc:.3f}",
              f"{m.aupr_out:.3f}", f"{m.fpr95:.3f}", f"{m.flagged:.3f}"] for name, m in metrics.ood.items()]
    table = Table(["data set", "n", "AUROC", "AUPR", "FPR@95%TPR", "flagged"], rows)
    return (f"detector: {metrics.detector}, threshold {metrics.threshold:.4g} (calibrated to flag "
            f"{100 * metrics.fpr:.1f}% of in-distribution data)\n\n" + table.markdown())


def _write(out: Path, metrics: DetectorMetrics, scores: dict[str, np.ndarray]) -> None:
    names = list(scores)
    write_text_atomic(out / METRICS_FILE, metrics.to_json())
    with atomic_write(out / "scores.npz") as tmp:
        np.savez(tmp, names=np.array(names), **{f"set{i}": scores[n] for i, n in enumerate(names)})
    aurocs = {n: m.auroc for n, m in metrics.ood.items()}
    histogram = score_histogram(scores, names[0], aurocs, metrics.detector, f"{metrics.detector} scores",
                                out / "scores.png", xlabel=f"{metrics.detector} (higher = more anomalous)",
                                threshold=metrics.threshold)
    rows = [[n, str(m.n), f"{m.auroc:.3f}", f"{m.aupr_out:.3f}", f"{m.fpr95:.3f}", f"{m.flagged:.3f}", m.adapted or ""]
            for n, m in metrics.ood.items()]
    ind = metrics.in_distribution
    body = [f"<h1>OOD evaluation of a detector: {html.escape(metrics.detector)}</h1>",
            f"<p class='note'>Threshold {metrics.threshold:.4g}, calibrated to flag {100 * metrics.fpr:.1f}% of "
            f"in-distribution data; on {html.escape(ind.name)}'s test split ({ind.n} inputs) it flags "
            f"{100 * ind.flagged:.1f}%.</p>",
            Table(["OOD set", "n", "AUROC", "AUPR", "FPR@95%TPR", "flagged", "adapted"], rows).html(),
            figure(histogram, "anomaly scores of every set", wide=True)]
    if metrics.validation_sets_evaluated:
        body.append(f"<p class='bad'>{html.escape(', '.join(metrics.validation_sets_evaluated))}: validation sets of "
                    "the detector's selection; their numbers are optimistic.</p>")
    write_text_atomic(out / "report.html", page("flowood detector evaluation", body))
