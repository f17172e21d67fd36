"""Batch scoring past one machine on Ray Data: what :func:`~flowood.deploy.score.score_files` does, as a Ray job.

This process (the driver) lists every sample the inputs name (:func:`~flowood.deploy.inputs.list_sources`: an
image file, or one row of an ``.npz`` array; an input that names nothing is refused here, before anything runs) and
makes a Ray Dataset of them; a pool of workers (Ray actors) scores it in batches of ``batch_size``. Each worker
loads the detector once from its file (:func:`~flowood.deploy.load.load_detector`), reads its samples
(:func:`~flowood.deploy.inputs.read_sources`) and makes the rows ``flowood score`` makes
(:func:`~flowood.deploy.score.score_items`). The rows come back in the inputs' order, and
:func:`~flowood.deploy.score.write_scores` writes them: the same columns, order and formats (CSV, JSON Lines,
Parquet) as ``flowood score``, in a file that appears complete or not at all.

What travels to the workers are paths, not data: the detector file and the inputs must be readable at the same
(absolute) paths on every node, e.g. on a shared file system. A worker that dies (its process, or its node) is
restarted and its batch scored again, up to ``retries`` times; a job that cannot finish raises
:class:`RayScoringError`, which names the inputs not scored, and no file is written.

Ray is an optional extra (``pip install 'flowood[ray]'``), imported only when a job runs.

Example:
    >>> from flowood.deploy.ray_scoring import score_files_on_ray
    >>> summary = score_files_on_ray("detector.pt", ["new_images/"], "scores.parquet", workers=4)  # doctest: +SKIP
    >>> summary.rows, summary.flagged                                                             # doctest: +SKIP
    (10000, 312)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from flowood.checkpoints import CheckpointError
from flowood.deploy.inputs import Source, list_sources, read_sources
from flowood.deploy.load import load_detector
from flowood.deploy.score import (
    ScoreSummary,
    ScoringOptions,
    is_scores_file,
    score_items,
    scores_format,
    scores_table,
    write_scores,
)
from flowood.errors import FlowoodError
from flowood.options import ConfigError, from_mapping, merge_options, option, to_mapping
from flowood.outputs import check_output_file

__all__ = ["RayOptions", "RayScoringOptions", "RayScoringError", "score_files_on_ray"]

#: how many names of inputs not scored an error message shows (all are in :attr:`RayScoringError.not_scored`).
_SHOWN = 10


@dataclass
class RayOptions:
    """Where a Ray job scores, and with how many workers: every field is an option."""

    address: str | None = option(None, "the Ray cluster to score on: none (the default) attaches to the cluster that "
                                 "the RAY_ADDRESS variable names, or that ray start started on this machine, and else "
                                 "starts Ray here for the job; auto: a running cluster only; local: a new Ray instance "
                                 "here; HOST:PORT: that cluster's head (its GCS port, 6379 by default). This process "
                                 "drives the job: run it on a node of the cluster (Ray Data does not run through Ray "
                                 "Client, ray://)", flag=False, metavar="ADDRESS")
    workers: int = option(2, "scoring workers (Ray actors): each loads the detector once, then scores a batch at a "
                          "time", minimum=1)
    cpus_per_worker: float = option(1.0, "CPUs each worker reserves on its node (and computes with)", minimum=0)
    retries: int = option(3, "how often a worker that dies (its process, or its node) is restarted and its batch "
                          "scored again before the job fails", minimum=0)


@dataclass
class RayScoringOptions:
    """How ``flowood score --ray`` scores: the options of :class:`~flowood.deploy.score.ScoringOptions` and of
    :class:`RayOptions`, each given by its own name."""

    scoring: ScoringOptions = option(default_factory=ScoringOptions, help="how inputs are scored", flag=False)
    ray: RayOptions = option(default_factory=RayOptions, help="where and how wide", flag=False)


class RayScoringError(FlowoodError, RuntimeError):
    """A Ray job that could not score every input (its workers died more often than ``retries`` allows, or could not
    load the detector); no scores file was written.

    Attributes:
        not_scored: the names of the inputs without a row, in the inputs' order.
    """

    def __init__(self, message: str, not_scored: list[str]) -> None:
        super().__init__(message)
        self.not_scored = not_scored


def score_files_on_ray(detector: str | Path, inputs: list[str], out: str | Path | TextIO | None = None,
                       options: ScoringOptions | RayScoringOptions | None = None, *,
                       ray_options: RayOptions | None = None, overwrite: bool = False, progress: bool = True,
                       **option_values: Any) -> ScoreSummary:
    """Score ``inputs`` with a detector file on Ray Data and write one row per input, as
    :func:`~flowood.deploy.score.score_files` does on one process (what ``flowood score --ray`` does).

    A process already connected to Ray (``ray.init`` called before) scores there, whatever ``address`` says; else
    Ray is reached (or started) as ``address`` says, and left again when the job ends.

    Args:
        detector: a detector file (or export folder) that every node reads at this path; a fitted detector in
            memory is refused: save it first.
        inputs: image files, folders, glob patterns, ``.npz`` files, read by the workers at the same paths.
        out: a ``.csv``, ``.jsonl`` or ``.parquet`` file (checked before anything runs, written atomically once every
            row is back), an open text stream, or None to count the rows only.
        options: a :class:`~flowood.deploy.score.ScoringOptions` (or a :class:`RayScoringOptions`).
        ray_options: a :class:`RayOptions`.
        overwrite: replace a scores file flowood wrote earlier.
        progress: show Ray Data's progress bars (not while rows go to a stream).
        **option_values: any field of either, e.g. ``batch_size=64, workers=8, address="auto"``.

    Returns:
        A :class:`~flowood.deploy.score.ScoreSummary`, as :func:`~flowood.deploy.score.score_files` returns.

    Raises:
        ConfigError: Ray is not installed, an in-memory detector, an address Ray cannot reach. CheckpointError: no
            detector at that path. DataError: an input that names nothing. OutputError: as ``score_files``.
        RayScoringError: the job could not score every input (nothing is written).
    """
    o = merge_options(RayScoringOptions, None, {**_given(options), **_given(ray_options), **option_values})
    ray = _import_ray()
    detector = _check_request(detector, inputs, out, o, overwrite)
    sources = list_sources(inputs)
    if not sources:  # folders without images: the rows of nothing, without a job
        return write_scores(iter(()), out, o.scoring.format)
    with _connected(ray, o.ray.address), _job_context(ray, progress and not hasattr(out, "write")):
        return write_scores(_job_rows(ray, detector, sources, o), out, o.scoring.format)


def _given(options: Any) -> dict[str, Any]:
    return to_mapping(options) if options is not None else {}


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ConfigError("scoring on Ray needs Ray Data: pip install 'flowood[ray]'") from err
    return ray


def _check_request(detector: Any, inputs: list[str], out: Any, o: RayScoringOptions, overwrite: bool) -> str:
    """The detector's absolute path, once the request is known to be one that can run (nothing runs before)."""
    if not isinstance(detector, (str, Path)):
        raise ConfigError("scoring on Ray needs the detector as a file every worker loads: save it first "
                          "(detector.save(PATH)) and pass its path")
    if not Path(detector).exists():
        raise CheckpointError(f"detector {detector} does not exist")
    address = o.ray.address
    if address is not None and address.startswith("ray://"):
        raise ConfigError(f"Ray Data does not run through Ray Client ({address}): run this on a node of the cluster, "
                          "with the address auto or HEAD:6379")
    if address is not None and address not in ("auto", "local") and ":" not in address:
        raise ConfigError(f"{address!r} is not a Ray address: give none, auto, local or HOST:PORT")
    scores_format(out, o.scoring.format)
    if out is not None and not hasattr(out, "write"):
        check_output_file(out, is_scores_file, [detector, *inputs], overwrite)
    return str(Path(detector).absolute())


@contextlib.contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[None]:
    """Connected to Ray: as this process already is, else as ``address`` says (and disconnected after)."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except ConnectionError as err:
        raise ConfigError(f"cannot reach Ray at {address}: {err}") from err
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _job_context(ray: Any, progress: bool) -> Iterator[None]:
    """Ray Data set up for one scoring job, and as it was after: rows in the inputs' order, a worker's own exception
    raised as itself (not wrapped), Ray Data's progress bars as asked, and its log quiet (a failure is raised)."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = (context.execution_options.preserve_order, context.raise_original_map_exception,
             context.enable_progress_bars, logger.level)
    context.execution_options.preserve_order = True
    context.raise_original_map_exception = True
    context.enable_progress_bars = progress
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        (context.execution_options.preserve_order, context.raise_original_map_exception,
         context.enable_progress_bars) = saved[:3]
        logger.setLevel(saved[3])


def _job_rows(ray: Any, detector: str, sources: list[Source], o: RayScoringOptions) -> Iterator[dict[str, Any]]:
    """The rows of every source, in order, as the workers send them back; a failed job raises
    :class:`RayScoringError` naming the sources without a row."""
    scored = _scored_dataset(ray, detector, sources, o)
    done = 0
    try:
        for table in scored.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in table.to_pylist():
                if done >= len(sources) or row["input"] != sources[done].name:
                    raise RuntimeError(f"Ray Data sent back the row of {row['input']} where the row of "
                                       f"{sources[min(done, len(sources) - 1)].name} was due")
                done += 1
                yield row
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None)
        if isinstance(err, ray.exceptions.RayTaskError) and not isinstance(cause, FlowoodError):
            raise  # a bug in a worker: its own exception and traceback
        raise _not_scored(sources, done, cause if isinstance(cause, FlowoodError) else _died(err, o.ray.retries)) \
            from err
    if done != len(sources):
        raise RuntimeError(f"Ray Data sent back {done} rows for {len(sources)} inputs")


def _scored_dataset(ray: Any, detector: str, sources: list[Source], o: RayScoringOptions) -> Any:
    """The sources as a Ray Dataset, mapped in batches by a fixed pool of :class:`_ScoreWorker` actors."""
    threads = max(1, int(o.ray.cpus_per_worker))
    dataset = ray.data.from_items([asdict(s) for s in sources])
    with warnings.catch_warnings():
        # Ray 2.60 deprecates map_batches' extra remote arguments but names no parameter for restarts yet
        warnings.simplefilter("ignore", DeprecationWarning)
        return dataset.map_batches(
            _ScoreWorker, fn_constructor_args=(detector, to_mapping(o.scoring), threads),
            batch_size=o.scoring.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=o.ray.workers), num_cpus=o.ray.cpus_per_worker,
            max_restarts=o.ray.retries, max_task_retries=o.ray.retries)


def _died(err: Exception, retries: int) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return (f"Ray lost the job's workers more often than `retries={retries}` allows ({type(err).__name__}: "
            f"{first})")


def _not_scored(sources: list[Source], done: int, reason: Any) -> RayScoringError:
    names = [s.name for s in sources[done:]]
    shown = ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
    return RayScoringError(f"{len(names)} of {len(sources)} inputs were not scored ({shown}): {reason}; no scores "
                           "file was written", names)


class _ScoreWorker:
    """One Ray Data worker (an actor): loads the detector once, then turns batches of sources into their rows."""

    def __init__(self, detector: str, scoring: dict[str, Any], threads: int) -> None:
        torch.set_num_threads(threads)
        self.options = from_mapping(ScoringOptions, scoring)
        self.detector, self.failure = None, None
        try:
            self.detector = load_detector(detector, self.options.device, self.options.backend,
                                          self.options.flow_export)
        except Exception as err:  # raised with the first batch, as itself: raised here, it would read as a death
            self.failure = err

    def __call__(self, batch: Any) -> Any:
        if self.failure is not None:
            raise self.failure
        sources = [Source(**s) for s in batch.to_pylist()]
        return scores_table(score_items(self.detector, read_sources(sources), self.options, progress=False))
