"""``OODDetector``: a density model and a score, used like a scikit-learn outlier detector, and saved as a file.

It follows scikit-learn's conventions for outlier detectors (``IsolationForest``, ``LocalOutlierFactor``):
``fit(X)`` returns the detector, ``score_samples(X)`` is higher for more normal inputs, ``decision_function(X)``
is ``score_samples(X) - offset_`` (negative for outliers), ``predict(X)`` gives +1 (in-distribution) or -1
(OOD), and ``get_params``/``set_params`` make it work with ``sklearn.base.clone``. flowood's own convention
stays available under clear names: :meth:`OODDetector.anomaly_score` (higher = more anomalous, in the score's
units) and :meth:`OODDetector.is_ood` (True for OOD).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import NotFittedError
from torch import Tensor
from torch.utils.data import DataLoader

from flowood import __version__
from flowood.checkpoints import CheckpointError, check_version, load_flow, read_weights_file, weights_sha256
from flowood.engines.backend import check_flow_export, engine_device, engine_flow
from flowood.errors import InputError
from flowood.flows import build_flow
from flowood.ood.density import as_density, capabilities
from flowood.ood.scores import OODScore, make_score
from flowood.options import ConfigError
from flowood.outputs import atomic_write, check_output_file
from flowood.runtime import resolve_device

__all__ = ["OODDetector", "CalibratedDetector", "collect_samples", "DETECTOR_FORMAT", "plain_tree",
           "calibrated_threshold"]

DETECTOR_FORMAT = "flowood-detector-1"


def collect_samples(data: Any) -> Tensor:
    """A tensor of samples from a tensor, a numpy array, a dataset with ``.data``, or a DataLoader of tensors or
    ``(x, y)`` pairs."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        return torch.from_numpy(data)
    if hasattr(data, "data") and isinstance(data.data, Tensor):
        return data.data
    if isinstance(data, DataLoader) or hasattr(data, "__iter__"):
        parts = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
        if not parts:
            raise InputError("the data loader yielded no batches")
        return torch.cat(parts)
    raise TypeError(f"cannot take samples from {type(data).__name__}; pass a tensor, a dataset or a DataLoader")


def calibrated_threshold(reference_scores: np.ndarray, fpr: float) -> float:
    """The anomaly score above which a share ``fpr`` of the calibration scores lies."""
    return float(np.quantile(reference_scores, 1.0 - fpr))


class CalibratedDetector(OutlierMixin, BaseEstimator):
    """What every flowood detector shares: a threshold calibrated on in-distribution scores at a false-positive
    rate, and scikit-learn's outlier-detector conventions on top of :meth:`anomaly_score`.

    Subclasses implement :meth:`anomaly_score` and set ``reference_scores_`` (the anomaly scores of in-distribution
    calibration data) when fitted; ``fpr`` is the share of those flagged.
    """

    fpr: float = 0.05

    def _fitted(self) -> bool:
        return hasattr(self, "reference_scores_")

    def check_fitted(self) -> None:
        """Refuse to go on with a detector that is not fitted.

        Raises:
            NotFittedError: ``fit`` was not called (nor the detector loaded from a file).
        """
        if not self._fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(in-distribution data) first")

    def anomaly_score(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        """One score per input in the score's units; higher means more anomalous."""
        raise NotImplementedError

    def calibrate(self) -> None:
        """Set the threshold for ``fpr`` from the calibration scores: ``threshold_`` on the anomaly-score scale and
        ``offset_`` on scikit-learn's. What fitting, loading and :meth:`set_fpr` end with."""
        self.threshold_ = self.threshold(self.fpr)
        self.offset_ = -self.threshold_

    def threshold(self, fpr: float | None = None) -> float:
        """The anomaly score above which an input is flagged, so that a share ``fpr`` of the calibration data
        is (default: the detector's ``fpr``)."""
        if not self._fitted():
            raise NotFittedError("call fit(in-distribution data) before threshold()")
        fpr = self.fpr if fpr is None else fpr
        if not 0.0 <= fpr <= 1.0:
            raise ConfigError(f"fpr must be in [0, 1], got {fpr}")
        return calibrated_threshold(self.reference_scores_, fpr)

    def set_fpr(self, fpr: float) -> None:
        """Move the threshold to flag a share ``fpr`` of the calibration data, without fitting again."""
        self.threshold(fpr)  # checks fpr
        self.fpr = float(fpr)
        self.calibrate()

    def is_ood(self, X: Any, fpr: float | None = None) -> np.ndarray:
        """True for inputs flagged as OOD at the threshold for ``fpr`` (default: the detector's)."""
        return self.anomaly_score(X) > self.threshold(fpr)

    def percentile(self, anomaly_scores: np.ndarray) -> np.ndarray:
        """Where each anomaly score falls among the calibration data's, in percent (100: above them all)."""
        self.check_fitted()
        reference = np.sort(self.reference_scores_)
        return 100.0 * np.searchsorted(reference, anomaly_scores, side="right") / len(reference)

    # -- scikit-learn's convention ------------------------------------------------------------------------------
    def score_samples(self, X: Any) -> np.ndarray:
        """Higher means more normal (the negated anomaly score), as scikit-learn's outlier detectors."""
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for inputs flagged as OOD."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for in-distribution inputs, -1 for OOD ones (at the threshold for ``fpr``)."""
        return np.where(self.decision_function(X) < 0, -1, 1)


class OODDetector(CalibratedDetector):
    """Flag inputs as out-of-distribution with a density model and one of flowood's scores.

    Args:
        model: a flowood flow, the path of a checkpoint written by ``flowood train``, or any density model (see
            :mod:`flowood.ood.density`).
        score: ``likelihood``, ``likelihood_ratio``, ``complexity``, ``complexity_jp2``, ``typicality``,
            ``latent_last_scale``, ``latent_early_scales`` or ``waic``.
        fpr: the share of in-distribution inputs that :meth:`predict` flags (sets ``offset_``).
        holdout: share of the ``fit`` data kept apart to calibrate the threshold, for scores that learn from the
            fit data (the others calibrate on all of it).
        score_options: passed to :func:`~flowood.ood.scores.make_score` (e.g. ``{"ensemble": [...]}``,
            ``{"background_steps": 2000}``). The detector dequantizes 8-bit images at the centre of each bin
            (``noise="center"``), so an input gets the same score whatever batch it comes in; pass
            ``{"noise": "uniform"}`` for the seeded random dequantization of ``flowood evaluate``.

    Attributes:
        offset_: the threshold on the :meth:`score_samples` scale (inputs below it are OOD).
        threshold_: the same threshold on the :meth:`anomaly_score` scale (inputs above it are OOD).
        reference_scores_: anomaly scores of the calibration data.
        scorer_: the fitted score.

    Example:
        >>> from flowood.flows import RealNVP
        >>> detector = OODDetector(RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4), score="likelihood")
        >>> detector = detector.fit(torch.randint(0, 128, (64, 1, 8, 8), dtype=torch.uint8))
        >>> predictions = detector.predict(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8))
        >>> predictions.shape, set(predictions.tolist()) <= {-1, 1}  # +1 in-distribution, -1 OOD
        ((2,), True)
    """

    def __init__(self, model: Any, score: str = "likelihood", fpr: float = 0.05, holdout: float = 0.2,
                 score_options: dict[str, Any] | None = None) -> None:
        self.model = model
        self.score = score
        self.fpr = fpr
        self.holdout = holdout
        self.score_options = score_options

    # -- fitting ------------------------------------------------------------------------------------------------
    def _density(self) -> Any:
        model = self.model
        if isinstance(model, (str, Path)):
            model = load_flow(model).flow
        return as_density(model).eval()

    def _make_scorer(self) -> OODScore:
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")
        if not 0.0 <= self.fpr <= 1.0:
            raise ConfigError(f"fpr must be in [0, 1], got {self.fpr}")
        options = {"noise": "center", **(self.score_options or {})}
        return make_score(self.score, self._density(), progress=False, **options)

    def fit(self, X: Any, y: Any = None, X_calibration: Any = None) -> OODDetector:
        """Fit the score on in-distribution data and calibrate the threshold for ``fpr``.

        Args:
            X: in-distribution samples (a tensor, array, dataset or DataLoader), as the model takes them.
            y: ignored (scikit-learn's convention).
            X_calibration: held-out in-distribution samples to calibrate the threshold on; without them, scores that
                fit keep a share ``holdout`` of ``X`` apart (the others calibrate on all of it).

        Returns:
            The detector.
        """
        x = collect_samples(X)
        if len(x) < 2:
            raise InputError(f"fit needs at least 2 in-distribution samples, got {len(x)}")
        scorer = self._make_scorer()
        if X_calibration is not None:
            if scorer.needs_fit:
                scorer.fit(x)
            ref = collect_samples(X_calibration)
        elif scorer.needs_fit:
            seed = scorer.seed
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            n_ref = max(1, round(self.holdout * len(x)))
            ref, train = x[perm[:n_ref]], x[perm[n_ref:]]
            scorer.fit(train)
        else:
            ref = x
        self.scorer_ = scorer
        self.reference_scores_ = scorer.score(ref)
        self.calibrate()
        return self

    # -- flowood's convention -----------------------------------------------------------------------------------
    def anomaly_score(self, X: Any) -> np.ndarray:
        """One score per input in the score's units; higher means more anomalous."""
        self.check_fitted()
        return self.scorer_.score(collect_samples(X))

    @property
    def score_name(self) -> str:
        self.check_fitted()
        return self.scorer_.name

    # -- files ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the fitted detector as one file: the flow itself (configuration and weights), the score and its
        fitted state, the calibration scores and the threshold. Loaded back with :meth:`load`.

        Raises:
            ConfigError: a detector whose model is not a flowood flow (its class could not be rebuilt on loading).
            OutputError: ``path`` is not a file flowood may write (see :func:`flowood.outputs.check_output_file`).
        """
        self.check_fitted()
        flow = self.scorer_.flow
        if not capabilities(flow).traceable:
            raise ConfigError("only detectors on flowood flows can be saved (another density's class could not be "
                              "rebuilt from the file); keep the Python objects instead")
        inputs = [self.model] if isinstance(self.model, (str, Path)) else []
        check_output_file(path, is_detector_file, inputs, overwrite)
        payload = {"format": DETECTOR_FORMAT, "flowood_version": __version__, "score": self.score,
                   "fpr": float(self.fpr), "holdout": float(self.holdout),
                   "score_options": _plain_options(self.score_options), "flow_config": flow.config,
                   "state_dict": flow.state_dict(), "fitted": self.scorer_.fitted_state(),
                   "reference_scores": torch.from_numpy(np.asarray(self.reference_scores_, dtype=np.float64)),
                   "input_shape": list(flow.input_shape), "source": str(self.model) if inputs else None,
                   "provenance": plain_tree({"fitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              **getattr(self, "provenance_", {})}),
                   "selection": plain_tree(getattr(self, "selection_", None))}
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backend: str = "torch",
             flow_export: str | Path | None = None) -> OODDetector:
        """A detector written by :meth:`save`, ready to score (no refitting).

        Args:
            path: the detector file.
            device: where a torch flow scores (engines score on the CPU; ``auto`` means it for them).
            backend: ``torch``, or ``onnxruntime`` / ``openvino``: the flow is exported (to a temporary folder,
                checked against PyTorch) and scored on that engine, on the CPU; a likelihood ratio's background
                flow stays in PyTorch.
            flow_export: with an engine ``backend``, an export folder of this detector's flow to score on instead
                (``flowood export --checkpoint``, e.g. with ``quantize="int8"``); refused if it holds another flow.

        Raises:
            CheckpointError: the file is missing, unreadable, unsafe, or not a flowood detector.
        """
        payload = read_weights_file(path, what="detector")
        if not isinstance(payload, dict) or payload.get("format") != DETECTOR_FORMAT:
            raise CheckpointError(f"{path} is not a flowood detector of a flow (write one with `flowood detector fit` "
                                  "or OODDetector.save)")
        return cls.from_payload(payload, path, device, backend, flow_export)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: str | Path, device: str = "cpu", backend: str = "torch",
                     flow_export: str | Path | None = None) -> OODDetector:
        """A detector from the contents of its file (what :meth:`load` does once the file is read and checked)."""
        check_version(payload.get("flowood_version", "unknown"), path, what="detector")
        flow = build_flow(payload["flow_config"])
        flow.load_state_dict(payload["state_dict"])
        device = engine_device(backend, device)
        flow.to(resolve_device(device)).eval()
        if flow_export is not None:
            flow = check_flow_export(flow_export, backend, weights_sha256(payload["state_dict"]))
        elif backend != "torch":
            flow = engine_flow(flow, backend)
        detector = cls(flow, payload["score"], payload["fpr"], payload["holdout"], payload["score_options"] or None)
        detector.scorer_ = detector._make_scorer()
        detector.scorer_.load_fitted_state(payload["fitted"])
        detector.reference_scores_ = payload["reference_scores"].numpy()
        detector.provenance_ = dict(payload.get("provenance") or {})
        detector.selection_ = payload.get("selection")
        detector.calibrate()
        return detector

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, as the model takes it."""
        self.check_fitted()
        return tuple(self.scorer_.flow.input_shape)


def _plain_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Score options that can be stored in a weights-only file (numbers, strings, booleans)."""
    plain = {}
    for key, value in (options or {}).items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            plain[key] = value
        else:
            raise ConfigError(f"score option {key!r} holds a {type(value).__name__}; a saved detector can keep only "
                              "numbers, strings and booleans (a background or an ensemble is not saved)")
    return plain


def plain_tree(value: Any) -> Any:
    """Provenance as plain data (numbers, strings, lists, dicts), what a weights-only file may hold."""
    if isinstance(value, dict):
        return {str(k): plain_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_tree(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    for kind in (bool, int, float):  # base types: a subclass (torch's TorchVersion is a str) is not plain data
        if isinstance(value, kind):
            return kind(value)
    return None if value is None else str(value)


#: every detector file format flowood writes: a flow's (:meth:`OODDetector.save`) and a pipeline's
#: (:meth:`flowood.deploy.pipeline.DetectorPipeline.save`).
DETECTOR_FILE_FORMATS = (DETECTOR_FORMAT, "flowood-pipeline-1")


def is_detector_file(path: Path) -> bool:
    """True for detector files flowood wrote (a flow's or a pipeline's)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") in DETECTOR_FILE_FORMATS

