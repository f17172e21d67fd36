"""Scoring new data file by file with a saved detector: one row per input.

``flowood score`` streams files, folders, globs and ``.npz`` files through a detector (a pixel flow's, or a pipeline
on a classifier's features: :func:`~flowood.deploy.load.load_detector`) and writes one row per input (CSV or
JSON Lines): the input's name, its anomaly score, the decision, where the score falls among the in-distribution
calibration scores, how the input was adapted to the detector's input, and why it could not be scored.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowood.deploy.inputs import MISMATCH_POLICIES, expand_inputs, stream_batches
from flowood.engines.backend import backend_option
from flowood.options import ConfigError, option
from flowood.outputs import atomic_write
from flowood.runtime import device_option

__all__ = ["ScoringOptions", "score_inputs", "write_scores", "is_scores_file", "ScoreSummary", "FIELDS",
           "SCORE_FORMATS"]

#: the columns of every row ``flowood score`` writes.
FIELDS = ("input", "score", "decision", "ood", "percentile", "error", "adapted")
#: the formats rows are written in.
SCORE_FORMATS = ("csv", "jsonl")


@dataclass
class ScoringOptions:
    """How ``flowood score`` scores: every field is an option (``flowood score --help`` shows them)."""

    batch_size: int = option(256, "inputs scored at once: memory stays bounded by it", minimum=1)
    mismatch: str = option("adapt", "an image in another format than the detector's input (colour, size, bit depth): "
                           "adapt (convert it, and say so in the row's `adapted`), flag (also decide ood: a format "
                           "the model never saw is itself a sign of OOD) or refuse (do not score it)",
                           choices=MISMATCH_POLICIES)
    format: str | None = option(None, "csv or jsonl (default: from the suffix of `out`; csv)", choices=SCORE_FORMATS)
    device: str = device_option()
    backend: str = backend_option()


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    rows: int
    flagged: int
    errors: int
    out: Path | None
    adapted: int = 0


def score_inputs(detector: Any, inputs: list[str], batch_size: int = 256, progress: bool = True,
                 mismatch: str = "adapt") -> Iterator[dict[str, Any]]:
    """One row per input (see :data:`FIELDS`), streamed: at most ``batch_size`` samples are in memory at once.

    Args:
        detector: an :class:`~flowood.ood.OODDetector` or a :class:`~flowood.deploy.pipeline.DetectorPipeline`.
        inputs: image files, folders, glob patterns, ``.npz`` files.
        batch_size: samples scored at once.
        progress: show a progress bar.
        mismatch: see :class:`ScoringOptions`.

    Inputs that cannot be read or do not fit the model give a row with ``error`` set (``decision`` is ``error``).

    Raises:
        DataError: an input that names nothing (checked here, before any row is made).
    """
    batches = stream_batches(expand_inputs(inputs), detector.input_shape, batch_size, mismatch)
    return _rows(detector, batches, progress)


def _rows(detector: Any, batches: Iterator[Any], progress: bool) -> Iterator[dict[str, Any]]:
    threshold = detector.threshold()
    bar = tqdm(desc="scoring", unit="input", disable=not progress)
    for batch in batches:
        if len(batch.names):
            scores = detector.anomaly_score(batch.data)
            percentiles = detector.percentile(scores)
            for name, score, pct, adapted, flagged in zip(batch.names, scores, percentiles, batch.adapted,
                                                          batch.flagged, strict=True):
                ood = bool(score > threshold) or flagged
                yield {"input": name, "score": float(score), "decision": "ood" if ood else "in",
                       "ood": ood, "percentile": round(float(pct), 2), "error": "", "adapted": adapted}
        for item in batch.failed:
            yield {"input": item.name, "score": None, "decision": "error", "ood": None, "percentile": None,
                   "error": item.error, "adapted": "; ".join(item.notes)}
        bar.update(len(batch.names) + len(batch.failed))
    bar.close()


def is_scores_file(path: Path) -> bool:
    """True for files :func:`write_scores` wrote (their first line is its CSV header or a JSON row of its fields,
    this version's or the earlier one without ``adapted``)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    known = (FIELDS, FIELDS[:-1])
    if first in {",".join(fields) for fields in known}:
        return True
    try:
        return set(json.loads(first)) in [set(fields) for fields in known]
    except (ValueError, TypeError):
        return False


def _write_rows(rows: Iterator[dict[str, Any]], f: Any, fmt: str) -> None:
    """Rows to an open text file; a terminal stream is flushed row by row, so a reader sees each as it comes."""
    writer = csv.DictWriter(f, fieldnames=FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for row in rows:
        if writer is not None:
            writer.writerow(row)
        else:
            f.write(json.dumps(row) + "\n")
        if f is sys.stdout:
            f.flush()


def write_scores(rows: Iterator[dict[str, Any]], out: str | Path | None, fmt: str | None = None,
                 stream: Any = None) -> ScoreSummary:
    """Write rows as CSV or JSON Lines (by ``fmt``, else by ``out``'s suffix), atomically: the file appears
    complete once every input is scored. With ``out=None`` the rows go to ``stream`` as they come (e.g.
    ``sys.stdout``), or are only counted.

    Raises:
        ConfigError: an unknown format.
    """
    path = Path(out) if out is not None else None
    fmt = fmt or ("jsonl" if path is not None and path.suffix in (".jsonl", ".json") else "csv")
    if fmt not in SCORE_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose csv or jsonl")
    counts = {"rows": 0, "flagged": 0, "errors": 0, "adapted": 0}

    def counted(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            counts["rows"] += 1
            counts["flagged"] += row["ood"] is True
            counts["errors"] += bool(row["error"])
            counts["adapted"] += bool(row["adapted"]) and not row["error"]
            yield row
    if path is None:
        if stream is not None:
            _write_rows(counted(rows), stream, fmt)
        else:
            for _ in counted(rows):
                pass
    else:
        with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            _write_rows(counted(rows), f, fmt)
    return ScoreSummary(counts["rows"], counts["flagged"], counts["errors"], path, counts["adapted"])
