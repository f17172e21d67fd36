"""What ``metrics.json`` holds, as typed records: :class:`Metrics` for an evaluation of a flow's scores
(:func:`flowood.evaluation.evaluate`), :class:`DetectorMetrics` for an evaluation of one saved detector
(:func:`flowood.deploy.evaluate.evaluate_detector`).

A file round-trips exactly: ``Metrics.from_json(path).to_dict()`` equals the file's JSON, and
``Metrics.from_json(m.to_dict()) == m``. A key the schema does not know, a missing key or a value of the wrong type is
an error that names the file and the key, so readers use attributes (``m.ood["mnist"].auroc``) and never guess.

The metric conventions (OOD is the positive class, ``aupr`` is ``aupr_out``) are :mod:`flowood.ood.metrics`'.

Example:
    >>> m = Metrics.from_json("runs/demo/eval")  # doctest: +SKIP
    >>> m.ood["mnist"].auroc, m.ood["mnist"].scores["complexity"].auroc  # doctest: +SKIP
    (0.08, 0.95)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flowood.errors import DataError

__all__ = ["Record", "Detection", "SetInfo", "ScoreMean", "ScoreDetection", "InDistribution", "OODSet", "Classifier",
           "RankedDetector", "GroupMean", "PublishedRow", "Leaderboard", "Benchmark", "Provenance", "Metrics",
           "DetectorSet", "DetectorInDistribution", "DetectorOODSet", "DetectorProvenance", "DetectorMetrics",
           "METRICS_FILE"]

METRICS_FILE = "metrics.json"

R = TypeVar("R", bound="Record")


def _optional() -> Any:
    """A field whose key is absent from the file when its value is None (a bootstrap interval, the classifier)."""
    return field(default=None, metadata={"optional": True})


def _earlier(stand_in: Any) -> Any:
    """A key that files written by earlier flowood 0.2 releases lack; when it is absent, ``stand_in(data)`` (the
    record's other keys) gives its value, what those releases meant by leaving it out."""
    return field(metadata={"earlier": stand_in})


class _SchemaError(Exception):
    """A mismatch at one place of the file; :meth:`Record.from_dict` adds the file's name."""


@dataclass(kw_only=True)
class Record:
    """A part of metrics.json: its fields are the keys of one JSON object, in the file's order."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (fields marked optional are left out when None)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[f.name] = _dump(value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], source: str = "the given metrics") -> R:
        """The record of a JSON object; ``source`` (a file's path) is named in errors.

        Raises:
            DataError: an unknown or missing key, or a value of the wrong type, named by its place in the file.
        """
        try:
            return _load(cls, data, "")
        except _SchemaError as err:
            raise DataError(f"{source} does not match flowood's {cls.__name__} schema: {err}") from None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _place(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _load(cls: type[R], data: Any, where: str) -> R:
    if not isinstance(data, Mapping):
        raise _SchemaError(f"{where or 'the file'} should be an object, not {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise _SchemaError(f"{where or 'the top level'} has unknown keys {', '.join(map(repr, unknown))}")
    earlier = {n: f.metadata["earlier"](data) for n, f in fields.items() if n not in data and "earlier" in f.metadata}
    missing = [n for n, f in fields.items() if n not in data and n not in earlier and not f.metadata.get("optional")]
    if missing:
        raise _SchemaError(f"{where or 'the top level'} lacks {', '.join(map(repr, missing))}")
    return cls(**earlier, **{k: _convert(hints[k], v, _place(where, k)) for k, v in data.items()})


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if isinstance(hint, type) and issubclass(hint, Record):
        return _load(hint, value, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _SchemaError(f"{where} should be an object, not {type(value).__name__}")
        return {k: _convert(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _SchemaError(f"{where} should be a list, not {type(value).__name__}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    return _primitive(hint, value, where)


def _primitive(hint: type, value: Any, where: str) -> Any:
    accepted = (int, float) if hint is float else (hint,)
    if (isinstance(value, bool) and hint is not bool) or not isinstance(value, accepted):
        raise _SchemaError(f"{where} should be {'a number' if hint is float else hint.__name__}, not {value!r}")
    return value


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _read_json(source: str | Path) -> tuple[dict[str, Any], str]:
    """The JSON of a metrics.json (or of a folder holding one), and the file's name for errors."""
    path = Path(source).expanduser()
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path} holds no {METRICS_FILE}: pass folders written by `flowood evaluate`")
    try:
        return json.loads(file.read_text()), str(file)
    except json.JSONDecodeError as err:
        raise DataError(f"{file} is not valid JSON ({err}); evaluate again") from err


class _File(Record):
    """A whole metrics.json: read from a file, a folder or a dict, written as JSON text."""

    @classmethod
    def from_json(cls: type[R], source: str | Path | Mapping[str, Any]) -> R:
        """The metrics of a file, of a folder holding ``metrics.json``, or of its JSON already loaded.

        Raises:
            DataError: no such file, invalid JSON, or JSON that does not match the schema (the file and the key are
                named).
        """
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        data, name = _read_json(source)
        return cls.from_dict(data, name)

    def to_json(self) -> str:
        """The text of metrics.json."""
        return json.dumps(self.to_dict(), indent=2)


# ---- the parts both kinds of evaluation share


@dataclass(kw_only=True)
class Detection(Record):
    """How well one score separates one OOD set from the in-distribution test set (:func:`flowood.ood.ood_metrics`).

    Attributes:
        auroc, aupr_in, aupr_out, fpr95, detection_accuracy: the metrics (OOD positive; see
            :mod:`flowood.ood.metrics`).
        auroc_ci, aupr_in_ci, aupr_out_ci, fpr95_ci, detection_accuracy_ci: 95% bootstrap intervals ``[low, high]``,
            present with ``bootstrap > 0``.
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    detection_accuracy: float
    auroc_ci: list[float] | None = _optional()
    aupr_in_ci: list[float] | None = _optional()
    aupr_out_ci: list[float] | None = _optional()
    fpr95_ci: list[float] | None = _optional()
    detection_accuracy_ci: list[float] | None = _optional()

    def interval(self, metric: str) -> list[float] | None:
        """The bootstrap interval of ``metric`` (``auroc``, ``fpr95``, ...), None without one."""
        return getattr(self, f"{metric}_ci")


@dataclass(kw_only=True)
class SetInfo(Record):
    """A scored set as it was read.

    Attributes:
        n: how many samples were scored. source: where they were read from. original_shape: one sample's shape
            before it was adapted to the model's.
    """

    n: int
    source: str
    original_shape: list[int]


# ---- an evaluation of a flow's scores


@dataclass(kw_only=True)
class ScoreMean(Record):
    """One score on the in-distribution test set. Attributes: mean: its mean."""

    mean: float


@dataclass(kw_only=True)
class ScoreDetection(Detection):
    """One score against one OOD set: the metrics, and ``mean``, the score's mean on the OOD set."""

    mean: float


@dataclass(kw_only=True)
class InDistribution(SetInfo):
    """The in-distribution test set.

    Attributes:
        name: the set's name. split: ``test``. dataset: the images behind it (an embeddings file's source set).
        bpd_mean, bpd_std: bits/dim. scores: every score's mean.
    """

    name: str
    split: str
    dataset: str = _earlier(lambda data: data.get("name"))
    bpd_mean: float
    bpd_std: float
    scores: dict[str, ScoreMean]


@dataclass(kw_only=True)
class OODSet(Detection, SetInfo):
    """One OOD set: its top-level metrics are the likelihood's.

    Attributes:
        dataset: the images behind it (None in files of earlier 0.2 releases, which did not record it).
        bpd_mean, bpd_std: bits/dim. aupr: ``aupr_out``.
        share_more_likely_than_median_in_dist: the share of the set with a higher likelihood than the median
            in-distribution sample. scores: every score's metrics.
    """

    dataset: str | None = _earlier(lambda data: None)
    bpd_mean: float
    bpd_std: float
    aupr: float
    share_more_likely_than_median_in_dist: float
    scores: dict[str, ScoreDetection]


@dataclass(kw_only=True)
class Classifier(Record):
    """The classifier behind classifier-based detectors.

    Attributes:
        head: where its last layer came from. num_classes: its classes. test_accuracy: on the in-distribution test
            features (None without labels). test_samples: how many.
    """

    head: str
    num_classes: int
    test_accuracy: float | None
    test_samples: int


@dataclass(kw_only=True)
class RankedDetector(Record):
    """A score or detector in the ranking by mean AUROC over the OOD sets.

    Attributes:
        detector: its name. family: ``flow`` or ``classifier``. needs: what it needs. mean_auroc: the mean.
    """

    detector: str
    family: str
    needs: str
    mean_auroc: float


@dataclass(kw_only=True)
class GroupMean(Record):
    """One score's metrics averaged over a benchmark's near-OOD or far-OOD sets."""

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float


@dataclass(kw_only=True)
class PublishedRow(Record):
    """A published leaderboard row: ``method`` and its AUROC (%) on the ``near`` and ``far`` groups."""

    method: str
    near: float
    far: float


@dataclass(kw_only=True)
class Leaderboard(Record):
    """The published numbers a benchmark records: ``note`` (their source) and ``rows``."""

    note: str | None = _optional()
    rows: list[PublishedRow] | None = _optional()


@dataclass(kw_only=True)
class Benchmark(Record):
    """An OpenOOD benchmark's grouping of the OOD sets.

    Attributes:
        name, title, source: the benchmark. near, far: the OOD sets of each group. scores: ``{score: {group:
            GroupMean}}``. leaderboard: the published rows.
    """

    name: str
    title: str
    source: str
    near: list[str]
    far: list[str]
    scores: dict[str, dict[str, GroupMean]]
    leaderboard: Leaderboard


@dataclass(kw_only=True)
class Provenance(Record):
    """Where an evaluation's numbers came from: the checkpoint, library versions, machine and every setting.

    Attributes:
        checkpoint, checkpoint_sha256: the model's file and hash. flow, flow_config: its family and configuration.
        trained_by_flowood, flowood_version: the versions that trained and evaluated it. options: every option.
        The others name what they record.
    """

    checkpoint: str
    checkpoint_sha256: str | None
    flow: str | None
    flow_config: dict[str, Any]
    trained_by_flowood: str | None
    flowood_version: str
    torch_version: str
    numpy_version: str
    python: str
    platform: str
    device: str
    precision: str
    seed: int
    backend: str = _earlier(lambda data: "torch")
    engine_parity: dict[str, Any] | None = _earlier(lambda data: None)
    max_samples: int | None
    dequantization: str
    data_root: str | None
    typicality_batch: int
    fit_samples: int
    ensemble: list[str]
    background: str | None
    background_steps: int | None
    options: dict[str, Any]


@dataclass(kw_only=True)
class Metrics(_File):
    """The metrics.json of :func:`flowood.evaluation.evaluate`.

    Attributes:
        in_distribution: the in-distribution test set. ood: every OOD set by name. score: what the likelihood score
            is. scores_computed: every score, ``likelihood`` first. classifier: the classifier behind
            classifier-based detectors (None: none computed). ranking: every score by mean AUROC, best first.
            benchmark: the OpenOOD grouping (None: no benchmark). provenance: where the numbers came from.
    """

    in_distribution: InDistribution
    ood: dict[str, OODSet]
    score: str
    scores_computed: list[str]
    classifier: Classifier | None = _optional()
    ranking: list[RankedDetector] = _earlier(lambda data: [])
    benchmark: Benchmark | None = _optional()
    provenance: Provenance

    @property
    def set_names(self) -> list[str]:
        """Every set's name, in-distribution first."""
        return [self.in_distribution.name, *self.ood]


# ---- an evaluation of one saved detector


@dataclass(kw_only=True)
class DetectorSet(SetInfo):
    """A set scored by a detector.

    Attributes:
        adapted: how its images were adapted to the detector's input (None: not adapted). score_mean, score_std: its
            anomaly scores. flagged: the share the detector's threshold flags.
    """

    adapted: str | None
    score_mean: float
    score_std: float
    flagged: float


@dataclass(kw_only=True)
class DetectorInDistribution(DetectorSet):
    """The in-distribution test set: ``name`` and ``split`` besides what every set records."""

    name: str
    split: str


@dataclass(kw_only=True)
class DetectorOODSet(Detection, DetectorSet):
    """One OOD set scored by the detector: what every set records and the metrics."""


@dataclass(kw_only=True)
class DetectorProvenance(Record):
    """Where a detector evaluation came from: the ``detector`` file, when it was ``fitted``, the
    ``flowood_version``, when it was ``evaluated``, the ``backend`` and every option."""

    detector: str
    fitted: str | None
    flowood_version: str
    evaluated: str
    backend: str
    options: dict[str, Any]


@dataclass(kw_only=True)
class DetectorMetrics(_File):
    """The metrics.json of :func:`flowood.deploy.evaluate.evaluate_detector`.

    Attributes:
        detector: the detector's score. threshold: its threshold. fpr: the share of in-distribution data it was
            calibrated to flag. in_distribution: the in-distribution test set. ood: every OOD set by name. score:
            what the score is. validation_sets_evaluated: OOD sets the detector was selected on. provenance: where
            the numbers came from.
    """

    detector: str
    threshold: float
    fpr: float
    in_distribution: DetectorInDistribution
    ood: dict[str, DetectorOODSet]
    score: str
    validation_sets_evaluated: list[str]
    provenance: DetectorProvenance
