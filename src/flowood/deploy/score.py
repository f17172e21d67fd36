"""Scoring new data file by file with a saved detector, and fitting that detector from a checkpoint.

``flowood detector fit`` turns a trained flow into a detector file (the flow, a score, its fitted state, and a
threshold calibrated on in-distribution data at a chosen false-positive rate); ``flowood score`` streams files,
folders, globs and ``.npz`` files through it and writes one row per input (CSV or JSON Lines): the input's name,
its anomaly score, the decision, and where the score falls among the in-distribution calibration scores.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowood.checkpoints import load_flow
from flowood.data import dataset_inputs, fit_to_shape, load_dataset
from flowood.deploy.inputs import expand_inputs, stream_batches
from flowood.ood.detector import OODDetector, is_detector_file
from flowood.options import ConfigError, merge_options, option
from flowood.outputs import atomic_write, check_output_file
from flowood.runtime import data_root_option, device_option, resolve_device, seed_option

__all__ = ["DetectorOptions", "fit_detector", "score_inputs", "write_scores", "is_scores_file", "ScoreSummary",
           "FIELDS"]

#: the columns of every row ``flowood score`` writes.
FIELDS = ("input", "score", "decision", "ood", "percentile", "error")


@dataclass
class DetectorOptions:
    """How ``flowood detector fit`` builds a detector: every field is an option."""

    score: str = option("likelihood", "the OOD score (flowood evaluate --help lists them)", metavar="SCORE")
    fpr: float = option(0.05, "share of in-distribution inputs flagged as OOD (sets the threshold)", minimum=0.0)
    dataset: str | None = option(None, "in-distribution data to fit and calibrate on (default: the checkpoint's "
                                 "training set)", metavar="NAME")
    fit_samples: int = option(5000, "in-distribution training samples used to fit and calibrate", minimum=2)
    holdout: float = option(0.2, "share of them kept apart to calibrate the threshold, for scores that fit",
                            minimum=0.0)
    typicality_batch: int = option(1, "group size of the typicality test (1: the single-sample form)", minimum=1)
    background_steps: int = option(1000, "training steps of the likelihood ratio's background flow", minimum=1)
    device: str = device_option()
    data_root: str | None = data_root_option()
    seed: int = seed_option()


def fit_detector(checkpoint: str | Path, out: str | Path | None = None, options: DetectorOptions | None = None, *,
                 overwrite: bool = False, **option_values: Any) -> OODDetector:
    """Fit a detector on a trained flow and (with ``out``) save it as one file.

    The score is fitted on a seeded random subset of the in-distribution *training* split (``fit_samples``), and
    the threshold calibrated on held-out samples of it, so the test split stays untouched for evaluation.

    Raises:
        OutputError: ``out`` is not a file flowood may write (checked before any data are loaded).
    """
    o = merge_options(DetectorOptions, options, option_values)
    loaded = load_flow(checkpoint)
    dataset = o.dataset or loaded.train_config.get("dataset")
    if not dataset:
        raise ConfigError("the checkpoint does not say which data set it was trained on; pass `dataset`")
    root = o.data_root or loaded.train_config.get("data_root")
    if out is not None:
        check_output_file(out, is_detector_file, [checkpoint, *dataset_inputs([dataset], root)], overwrite)
    flow = loaded.flow.to(resolve_device(o.device)).eval()
    options = {"typicality_batch": o.typicality_batch, "seed": o.seed}
    if o.score == "likelihood_ratio":
        options["background_steps"] = o.background_steps
    detector = OODDetector(flow, o.score, o.fpr, o.holdout, options)
    train = load_dataset(dataset, "train", root, shape=flow.input_shape).take(o.fit_samples, seed=o.seed)
    detector.fit(fit_to_shape(train, flow.input_shape))
    if out is not None:
        detector.save(out, overwrite=True)  # checked above, before the work
    return detector


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    rows: int
    flagged: int
    errors: int
    out: Path | None


def score_inputs(detector: OODDetector, inputs: list[str], batch_size: int = 256,
                 progress: bool = True) -> Iterator[dict[str, Any]]:
    """One row per input (see :data:`FIELDS`), streamed: at most ``batch_size`` samples are in memory at once.
    Inputs that cannot be read or do not fit the model give a row with ``error`` set."""
    threshold = detector.threshold()
    bar = tqdm(desc="scoring", unit="input", disable=not progress)
    for batch in stream_batches(expand_inputs(inputs), detector.input_shape, batch_size):
        if len(batch.names):
            scores = detector.anomaly_score(batch.data)
            percentiles = detector.percentile(scores)
            for name, score, pct in zip(batch.names, scores, percentiles, strict=True):
                ood = bool(score > threshold)
                yield {"input": name, "score": float(score), "decision": "ood" if ood else "in",
                       "ood": ood, "percentile": round(float(pct), 2), "error": ""}
        for item in batch.failed:
            yield {"input": item.name, "score": None, "decision": "error", "ood": None, "percentile": None,
                   "error": item.error}
        bar.update(len(batch.names) + len(batch.failed))
    bar.close()


def is_scores_file(path: Path) -> bool:
    """True for files :func:`write_scores` wrote (their first line is its CSV header or a JSON row of its fields)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    if first == ",".join(FIELDS):
        return True
    try:
        return set(json.loads(first)) == set(FIELDS)
    except (ValueError, TypeError):
        return False


def write_scores(rows: Iterator[dict[str, Any]], out: str | Path | None, fmt: str | None = None) -> ScoreSummary:
    """Write rows as CSV or JSON Lines (by ``fmt``, else by ``out``'s suffix), atomically: the file appears
    complete once every input is scored. With ``out=None`` the rows are only counted."""
    path = Path(out) if out is not None else None
    fmt = fmt or ("jsonl" if path is not None and path.suffix in (".jsonl", ".json") else "csv")
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"unknown format {fmt!r}; choose csv or jsonl")
    counts = {"rows": 0, "flagged": 0, "errors": 0}

    def counted(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            counts["rows"] += 1
            counts["flagged"] += row["ood"] is True
            counts["errors"] += bool(row["error"])
            yield row
    if path is None:
        for _ in counted(rows):
            pass
        return ScoreSummary(counts["rows"], counts["flagged"], counts["errors"], None)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(counted(rows))
        else:
            for row in counted(rows):
                f.write(json.dumps(row) + "\n")
    return ScoreSummary(counts["rows"], counts["flagged"], counts["errors"], path)
