"""Scoring new data file by file with a saved detector: one row per input.

``flowood score`` (:func:`score_files`) streams files, folders, globs and ``.npz`` files through a detector (a pixel
flow's, or a pipeline on a classifier's features: :func:`~flowood.deploy.load.load_detector`) and writes one row
per input, in the inputs' order (CSV, JSON Lines or Parquet, :func:`write_scores`): the input's name, its anomaly
score, the decision, where the score falls among the in-distribution calibration scores, how the input was adapted
to the detector's input, and why it could not be scored. :mod:`flowood.deploy.ray_scoring` runs the same scoring
on a Ray cluster.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from flowood.deploy.inputs import Item, expand_inputs, mismatch_option, stream_batches
from flowood.deploy.load import load_detector
from flowood.engines.backend import backend_option, flow_export_option
from flowood.errors import closest
from flowood.options import ConfigError, merge_options, option
from flowood.outputs import atomic_write, check_output_file
from flowood.runtime import device_option

__all__ = ["ScoringOptions", "score_files", "score_inputs", "score_items", "write_scores", "is_scores_file",
           "ScoreSummary", "FIELDS", "SCORE_FORMATS", "scores_format", "scores_table"]

#: the columns of every row ``flowood score`` writes.
FIELDS = ("input", "score", "decision", "ood", "percentile", "error", "adapted")
#: the formats rows are written in.
SCORE_FORMATS = ("csv", "jsonl", "parquet")
#: the format a file's suffix names (other suffixes: csv).
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass
class ScoringOptions:
    """How ``flowood score`` scores: every field is an option (``flowood score --help`` shows them)."""

    batch_size: int = option(256, "inputs scored at once: memory stays bounded by it", minimum=1)
    mismatch: str = mismatch_option()
    format: str | None = option(None, "csv, jsonl or parquet (default: from the suffix of `out`: .jsonl, .parquet; "
                                "else csv)", choices=SCORE_FORMATS)
    device: str = device_option()
    backend: str = backend_option()
    flow_export: str | None = flow_export_option()


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    rows: int
    flagged: int
    errors: int
    out: Path | None
    adapted: int = 0


def score_files(detector: Any, inputs: list[str], out: str | Path | TextIO | None = None,
                options: ScoringOptions | None = None, *, overwrite: bool = False, progress: bool = True,
                **option_values: Any) -> ScoreSummary:
    """Score ``inputs`` with a detector and write one row per input (what ``flowood score`` does).

    Args:
        detector: a detector file (or export folder) :func:`~flowood.deploy.load.load_detector` reads, or a
            fitted detector.
        inputs: image files, folders, glob patterns, ``.npz`` files.
        out: a ``.csv``, ``.jsonl`` or ``.parquet`` file (checked before anything is scored, written atomically), an
            open text stream the rows go to as they come (e.g. ``sys.stdout``), or None to count them only.
        options: a :class:`ScoringOptions` (its fields are listed there).
        overwrite: replace a scores file flowood wrote earlier.
        progress: show a progress bar (not while rows go to a stream).
        **option_values: any field of :class:`ScoringOptions`, e.g. ``batch_size=64, mismatch="flag"``.

    Raises:
        OutputError: ``out`` is not a file flowood may write. DataError: an input that names nothing. ConfigError: an
            unknown format, or Parquet to a stream.
    """
    o = merge_options(ScoringOptions, options, option_values)
    scores_format(out, o.format)
    to_file = out is not None and not _is_stream(out)
    if to_file:
        sources = [detector] if isinstance(detector, (str, Path)) else []
        check_output_file(out, is_scores_file, [*sources, *inputs], overwrite)
    if isinstance(detector, (str, Path)):
        detector = load_detector(detector, device=o.device, backend=o.backend, flow_export=o.flow_export)
    return write_scores(score_inputs(detector, inputs, o, progress=progress and not _is_stream(out)), out, o.format)


def score_inputs(detector: Any, inputs: list[str], options: ScoringOptions | None = None, *, progress: bool = True,
                 **option_values: Any) -> Iterator[dict[str, Any]]:
    """One row per input (see :data:`FIELDS`), streamed: at most ``batch_size`` samples are in memory at once.

    Args:
        detector: an :class:`~flowood.ood.OODDetector` or a :class:`~flowood.deploy.pipeline.DetectorPipeline`.
        inputs: image files, folders, glob patterns, ``.npz`` files.
        options: a :class:`ScoringOptions`; ``batch_size`` (samples scored at once) and ``mismatch`` apply here.
        progress: show a progress bar.
        **option_values: any field of :class:`ScoringOptions`.

    Inputs that cannot be read or do not fit the model give a row with ``error`` set (``decision`` is ``error``).

    Raises:
        DataError: an input that names nothing (checked here, before any row is made).
    """
    o = merge_options(ScoringOptions, options, option_values)
    return score_items(detector, expand_inputs(inputs), o, progress=progress)


def score_items(detector: Any, items: Iterable[Item], options: ScoringOptions | None = None, *,
                progress: bool = True, **option_values: Any) -> Iterator[dict[str, Any]]:
    """One row per item, in order: :func:`score_inputs` once its inputs are read (by
    :func:`~flowood.deploy.inputs.expand_inputs`, or by :func:`~flowood.deploy.inputs.read_sources` where the inputs
    were listed elsewhere).

    Args:
        detector: as :func:`score_inputs` takes it.
        items: :class:`~flowood.deploy.inputs.Item` s.
        options: a :class:`ScoringOptions`; ``batch_size`` and ``mismatch`` apply here.
        progress: show a progress bar.
        **option_values: any field of :class:`ScoringOptions`.
    """
    o = merge_options(ScoringOptions, options, option_values)
    batches = stream_batches(iter(items), detector.input_shape, o.batch_size, o.mismatch)
    return _rows(detector, batches, progress)


def _rows(detector: Any, batches: Iterator[Any], progress: bool) -> Iterator[dict[str, Any]]:
    """The rows of every batch, in the inputs' order (an input that failed stands where it came)."""
    threshold = detector.threshold()
    bar = tqdm(desc="scoring", unit="input", disable=not progress)
    for batch in batches:
        rows = _scored_rows(detector, batch, threshold) if len(batch.names) else []
        for at, item in zip(batch.failed_at, batch.failed, strict=True):
            rows.insert(at, {"input": item.name, "score": None, "decision": "error", "ood": None, "percentile": None,
                             "error": item.error, "adapted": "; ".join(item.notes)})
        yield from rows
        bar.update(len(rows))
    bar.close()


def _scored_rows(detector: Any, batch: Any, threshold: float) -> list[dict[str, Any]]:
    scores = detector.anomaly_score(batch.data)
    percentiles = detector.percentile(scores)
    rows = []
    for name, score, pct, adapted, flagged in zip(batch.names, scores, percentiles, batch.adapted, batch.flagged,
                                                  strict=True):
        ood = bool(score > threshold) or flagged
        rows.append({"input": name, "score": float(score), "decision": "ood" if ood else "in", "ood": ood,
                     "percentile": round(float(pct), 2), "error": "", "adapted": adapted})
    return rows


def is_scores_file(path: Path) -> bool:
    """True for files :func:`write_scores` wrote: a Parquet file of its columns, or a text file whose first line is
    its CSV header or a JSON row of its fields (this version's or the earlier one without ``adapted``)."""
    try:
        with open(path, "rb") as f:
            parquet = f.read(4) == b"PAR1"
        if parquet:
            return _parquet_columns(path) == FIELDS
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


def _parquet_columns(path: Path) -> tuple[str, ...] | None:
    """The column names of a Parquet file (None: unreadable, or no pyarrow to read it)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return None
    try:
        return tuple(pq.read_schema(path).names)
    except (OSError, ValueError):
        return None


def _is_stream(out: Any) -> bool:
    return hasattr(out, "write")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise ConfigError("writing Parquet needs pyarrow: pip install pyarrow (or choose `format` csv or jsonl)") \
            from err
    return pyarrow


def scores_format(out: str | Path | TextIO | None, fmt: str | None = None) -> str:
    """The format rows go to ``out`` in: ``fmt``, else the one ``out``'s suffix names (``.jsonl`` or ``.json``:
    jsonl; ``.parquet``: parquet), else csv.

    Raises:
        ConfigError: an unknown format, or Parquet to a stream (it is written to a file).
    """
    path = Path(out) if out is not None and not _is_stream(out) else None
    fmt = fmt or (_SUFFIX_FORMATS.get(path.suffix.lower(), "csv") if path is not None else "csv")
    if fmt not in SCORE_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}{closest(fmt, SCORE_FORMATS)}; choose {', '.join(SCORE_FORMATS)}")
    if fmt == "parquet" and _is_stream(out):
        raise ConfigError("Parquet is written to a file, not to a stream: name a .parquet file as `out`, or choose "
                          "`format` csv or jsonl")
    return fmt


def scores_table(rows: Iterable[dict[str, Any]]) -> Any:
    """Rows as a ``pyarrow.Table`` of :data:`FIELDS` in that order: ``score`` and ``percentile`` float64, ``ood``
    bool, the others strings; what a row leaves empty (``None``) is null.

    Raises:
        ConfigError: pyarrow is not installed.
    """
    pa = _pyarrow()
    schema = pa.schema([("input", pa.string()), ("score", pa.float64()), ("decision", pa.string()),
                        ("ood", pa.bool_()), ("percentile", pa.float64()), ("error", pa.string()),
                        ("adapted", pa.string())])
    return pa.Table.from_pylist(list(rows), schema=schema)


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path, chunk: int = 8192) -> None:
    """Rows to a Parquet file, ``chunk`` rows at a time (one row group each), so memory stays bounded."""
    pq = _pyarrow().parquet
    with pq.ParquetWriter(path, scores_table([]).schema) as writer:
        while (table := scores_table(itertools.islice(rows, chunk))).num_rows:
            writer.write_table(table)


def _write_rows(rows: Iterator[dict[str, Any]], f: TextIO, fmt: str) -> None:
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


def write_scores(rows: Iterable[dict[str, Any]], out: str | Path | TextIO | None, fmt: str | None = None
                 ) -> ScoreSummary:
    """Write rows (of :data:`FIELDS`) as CSV, JSON Lines or Parquet (by ``fmt``, else by ``out``'s suffix:
    :func:`scores_format`) and count them.

    Args:
        rows: the rows, e.g. from :func:`score_inputs`.
        out: a file path (written atomically: the file appears complete once every row is written), an open text
            stream the rows go to as they come (e.g. ``sys.stdout``; not for Parquet), or None to count them only.
        fmt: ``csv``, ``jsonl`` or ``parquet`` (columns :data:`FIELDS`, typed as :func:`scores_table` says; needs
            pyarrow).

    Raises:
        ConfigError: an unknown format, Parquet to a stream, or Parquet without pyarrow.
    """
    fmt = scores_format(out, fmt)
    path = Path(out) if out is not None and not _is_stream(out) else None
    counts = {"rows": 0, "flagged": 0, "errors": 0, "adapted": 0}

    def counted(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            counts["rows"] += 1
            counts["flagged"] += row["ood"] is True
            counts["errors"] += bool(row["error"])
            counts["adapted"] += bool(row["adapted"]) and not row["error"]
            yield row
    if path is not None and fmt == "parquet":
        _pyarrow()  # checked before any row is made
        with atomic_write(path) as tmp:
            _write_parquet(counted(rows), tmp)
    elif path is not None:
        with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            _write_rows(counted(rows), f, fmt)
    elif out is not None:
        _write_rows(counted(rows), out, fmt)
    else:
        for _ in counted(rows):
            pass
    return ScoreSummary(counts["rows"], counts["flagged"], counts["errors"], path, counts["adapted"])
