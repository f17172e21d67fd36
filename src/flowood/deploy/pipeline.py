"""A detector as a pipeline: images -> a classifier's features -> a detector -> a calibrated threshold, in one file.

flowood's own measurements say which detectors work: a flow on a classifier's features, or Mahalanobis on the same
features, detect MNIST under FashionMNIST where the pixel flow fails (the paper's Section 8). A
:class:`DetectorPipeline` makes such a detector deployable from raw images:

1. *input*: 8-bit images in the shape the feature extractor takes (``flowood score`` adapts others and says so);
2. *feature extractor* (:mod:`flowood.embed.extractors`): a classifier ``flowood embed`` trained or loaded, a
   torchvision architecture with a local weights file, or your own ``torch.export`` model;
3. *detector*: a flow on the features with one of its scores (``method="flow"``), or any classifier-based detector
   from pytorch-ood (:data:`~flowood.ood.classifier.CLASSIFIER_DETECTORS`);
4. *threshold*: calibrated on held-out in-distribution images at a chosen false-positive rate, kept with the
   calibration scores, so it can be moved without refitting.

It follows scikit-learn's outlier-detector conventions, as :class:`~flowood.ood.OODDetector` (a pixel flow, the
pipeline without an extractor) does, and saves as one file of weights and plain data (read without unpickling
code) with its provenance. :func:`read_detector` reads either kind in PyTorch, and
:func:`flowood.deploy.load_detector` also on an engine or from an export folder.

Example:
    >>> import torch
    >>> from flowood.embed import SmallCNN
    >>> from flowood.embed.extractors import ClassifierExtractor
    >>> from flowood.embed.backbones import Preprocess
    >>> extractor = ClassifierExtractor(SmallCNN(1, 3, embedding_dim=4).eval(),
    ...                                 Preprocess(1, mean=(0.5,), std=(0.5,)), "smallcnn", (1, 8, 8))
    >>> images, labels = torch.randint(0, 256, (80, 1, 8, 8), dtype=torch.uint8), torch.arange(80) % 3
    >>> detector = DetectorPipeline(extractor, method="mahalanobis", fpr=0.1).fit(images, labels)
    >>> detector.predict(images[:4]).shape       # +1 in-distribution, -1 OOD
    (4,)
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowood import __version__
from flowood.checkpoints import CheckpointError, check_version, file_sha256, read_weights_file
from flowood.embed.extractors import FeatureExtractor, extractor_from_spec
from flowood.engines.backend import engine_device
from flowood.engines.export import DensityGraph
from flowood.errors import InputError, closest
from flowood.flows import FlowModel, build_flow
from flowood.ood.classifier import (
    CLASSIFIER_DETECTORS,
    ClassifierDetector,
    ClassifierHead,
    ClassifierOutputs,
    make_classifier_detector,
)
from flowood.ood.detector import (
    DETECTOR_FILE_FORMATS,
    CalibratedDetector,
    OODDetector,
    calibrated_threshold,
    collect_samples,
    is_detector_file,
    plain_tree,
)
from flowood.ood.scores import make_score
from flowood.options import ConfigError
from flowood.outputs import atomic_write, check_output_file
from flowood.runtime import resolve_device

__all__ = ["DetectorPipeline", "FlowStage", "PIPELINE_FORMAT", "METHODS", "FEATURE_FLOW_SCORES", "read_detector",
           "read_detector_payload", "detector_info", "linear_head", "make_stage", "check_flow_score", "DEFAULT_HOLDOUT",
           "PARITY_IMAGES"]

PIPELINE_FORMAT = DETECTOR_FILE_FORMATS[1]
#: the scores a flow on features can use in a pipeline (each a function of its log-likelihood, so each exports).
FEATURE_FLOW_SCORES = ("likelihood", "typicality", "latent_last_scale", "latent_early_scales")
#: every detector a pipeline can end in: a flow on the features, or a classifier-based detector.
METHODS = ("flow", *CLASSIFIER_DETECTORS)
#: in-distribution images kept in the file for the parity check of an export (plain uint8 pixels).
PARITY_IMAGES = 16
#: the held-out share of the in-distribution images that calibrates a threshold, when it is not given otherwise.
DEFAULT_HOLDOUT = 0.2


def check_flow_score(score: str, score_options: dict[str, Any] | None = None) -> None:
    """Refuse a score a flow on features cannot give per image.

    Raises:
        ConfigError: a score outside :data:`FEATURE_FLOW_SCORES`, or typicality of groups of inputs.
    """
    if score not in FEATURE_FLOW_SCORES:
        raise ConfigError(f"a flow on features scores with {', '.join(FEATURE_FLOW_SCORES)}, not {score!r}"
                          f"{closest(score, FEATURE_FLOW_SCORES)}")
    if int((score_options or {}).get("typicality_batch", 1)) != 1:
        raise ConfigError("a detector decides per input: `typicality_batch` must be 1 (the single-sample form)")


class FlowStage:
    """A flow on a classifier's features and one of its scores, as a pipeline's detector stage.

    Args:
        flow: a flow on vectors (RealNVPTabular, MAF) trained on the extractor's features.
        score: one of :data:`FEATURE_FLOW_SCORES`.
        score_options: passed to :func:`~flowood.ood.scores.make_score`.
    """

    name = "flow"
    needs = "features"
    uses_logits = uses_labels = uses_head = False

    def __init__(self, flow: FlowModel, score: str = "likelihood", score_options: dict[str, Any] | None = None
                 ) -> None:
        check_flow_score(score, score_options)
        if len(flow.input_shape) != 1:
            raise ConfigError(f"the flow takes {'x'.join(map(str, flow.input_shape))} inputs, not feature vectors; a "
                              "flow on the inputs is a detector of its own (fit it from its `checkpoint`, without a "
                              "`classifier`)")
        self.flow = flow.eval()
        self.score_name = score
        self.score_options = dict(score_options or {})
        self.scorer = make_score(score, flow, progress=False, noise="center", **self.score_options)

    def fit(self, train: ClassifierOutputs, labels: Tensor | None = None) -> FlowStage:
        if self.scorer.needs_fit:
            self.scorer.fit(train.features)
        return self

    def score(self, x: ClassifierOutputs) -> np.ndarray:
        return self.scorer.score(x.features.to(next(self.flow.parameters()).device))

    def state(self) -> dict[str, Any]:
        return {"score": self.score_name, "score_options": self.score_options, "flow_config": self.flow.config,
                "state_dict": {k: v.detach().cpu() for k, v in self.flow.state_dict().items()},
                "fitted": self.scorer.fitted_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FlowStage:
        flow = build_flow(state["flow_config"])
        flow.load_state_dict(state["state_dict"])
        stage = cls(flow.eval(), state["score"], state.get("score_options"))
        stage.scorer.load_fitted_state(state["fitted"])
        return stage

    def graph(self) -> nn.Module:
        return FlowScoreGraph(DensityGraph(self.flow), self.score_name, getattr(self.scorer, "entropy", None))


class FlowScoreGraph(nn.Module):
    """A flow score as a function of the exported density's outputs: ``(features, logits) -> score``.

    Args:
        density: the flow's :class:`~flowood.engines.export.DensityGraph`.
        score: one of :data:`FEATURE_FLOW_SCORES` (also for pixel flows, whose inputs are dequantized first).
        entropy: typicality's fitted entropy estimate, in bits/dim.
    """

    def __init__(self, density: nn.Module, score: str, entropy: float | None = None) -> None:
        super().__init__()
        self.density, self.score = density, score
        flow = density.flow
        self.per_dim = flow.num_dims * math.log(2.0)
        dims = flow.scale_dims
        self.last = dims[-1] * math.log(2.0)
        self.early = max(1, sum(dims[:-1])) * math.log(2.0)
        self.entropy = entropy

    def forward(self, features: Tensor, logits: Tensor | None = None) -> Tensor:
        log_prob, priors = self.density(features)
        if self.score == "latent_last_scale":
            return -priors[:, -1] / self.last
        if self.score == "latent_early_scales":
            return -priors[:, :-1].sum(1) / self.early
        bits_per_dim = -log_prob / self.per_dim
        if self.score == "typicality":
            return (bits_per_dim - self.entropy).abs()
        return bits_per_dim


def make_stage(method: str, head: ClassifierHead | None = None, flow: FlowModel | None = None,
               score: str = "likelihood", score_options: dict[str, Any] | None = None
               ) -> FlowStage | ClassifierDetector:
    """The detector stage for ``method`` (see :data:`METHODS`).

    Raises:
        ConfigError: an unknown method, or ``flow`` without a flow.
    """
    if method == "flow":
        if flow is None:
            raise ConfigError("method 'flow' needs a flow trained on the features (`flow`)")
        return FlowStage(flow, score, score_options)
    if method not in CLASSIFIER_DETECTORS:
        raise ConfigError(f"unknown method {method!r}{closest(method, METHODS)}; choose from {', '.join(METHODS)}")
    return make_classifier_detector(method, head)


def linear_head(outputs: ClassifierOutputs, tolerance: float = 1e-4) -> tuple[ClassifierHead | None, float]:
    """The last linear layer behind a model's logits, recovered by least squares from its ``(features, logits)``,
    and the largest relative residual; None when the logits are not a linear function of the features (or there
    are too few samples to tell).

    ViM and ReAct need the layer itself; a model that gives features and logits does not say what it is.
    """
    if outputs.logits is None:
        return None, math.inf
    features, logits = outputs.features.double(), outputs.logits.double()
    if len(features) < 2 * (features.shape[1] + 1):
        return None, math.inf
    a = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(a, logits).solution
    residual = float((a @ solution - logits).abs().max() / logits.abs().max().clamp(min=1.0))
    if residual > tolerance:
        return None, residual
    return ClassifierHead(solution[:-1].T.float().contiguous(), solution[-1].float(), "least squares"), residual


class DetectorPipeline(CalibratedDetector):
    """8-bit images -> a feature extractor -> a detector -> a threshold (see the module docstring).

    Args:
        extractor: the feature extractor (:mod:`flowood.embed.extractors`).
        method: ``flow`` or a classifier-based detector (:data:`METHODS`).
        fpr: the share of in-distribution inputs :meth:`predict` flags.
        holdout: share of the ``fit`` images kept apart to calibrate the threshold (when no calibration images are
            given to :meth:`fit`).
        flow: for ``method="flow"``, the flow trained on the extractor's features.
        score: for ``method="flow"``, its score (:data:`FEATURE_FLOW_SCORES`).
        score_options: for ``method="flow"``, passed to the score.
        batch_size: images through the extractor at once.
        seed: the seed of the holdout split.

    Attributes:
        stage_: the fitted detector stage. reference_scores_: anomaly scores of the calibration images.
        threshold_, offset_: the threshold on the anomaly-score and scikit-learn scales. head_: the classifier's
        last linear layer, where known. provenance_: where everything came from (shown by ``flowood detector info``).
    """

    def __init__(self, extractor: FeatureExtractor, method: str = "mahalanobis", fpr: float = 0.05,
                 holdout: float = DEFAULT_HOLDOUT, flow: FlowModel | None = None, score: str = "likelihood",
                 score_options: dict[str, Any] | None = None, batch_size: int = 256, seed: int = 0) -> None:
        self.extractor = extractor
        self.method = method
        self.fpr = fpr
        self.holdout = holdout
        self.flow = flow
        self.score = score
        self.score_options = score_options
        self.batch_size = batch_size
        self.seed = seed

    # -- features -----------------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of the images the pipeline takes (others are adapted to it by ``flowood score``)."""
        return tuple(self.extractor.input_shape)

    def _device(self) -> torch.device:
        return next((p.device for p in self.extractor.parameters()), torch.device("cpu"))

    @torch.inference_mode()
    def extract(self, X: Any, progress: bool = False, desc: str = "features") -> ClassifierOutputs:
        """The extractor's outputs for uint8 images ``[N, *input_shape]`` (in batches of ``batch_size``).

        Raises:
            InputError: images of another dtype or shape.
        """
        images = collect_samples(X)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.input_shape:
            raise InputError(f"the pipeline takes uint8 images of shape {'x'.join(map(str, self.input_shape))}, got "
                             f"{images.dtype} {tuple(images.shape[1:])}; flowood score adapts images to it, or use "
                             "flowood.data.adapt_images")
        self.extractor.eval()
        device = self._device()
        parts = []
        for start in tqdm(range(0, len(images), self.batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            features, logits = self.extractor(images[start:start + self.batch_size].to(device))
            parts.append(ClassifierOutputs(features.float().cpu(), logits.float().cpu() if logits is not None
                                           else None))
        if not parts:
            raise InputError("no images to score")
        return ClassifierOutputs.cat(parts)

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, X_calibration: Any = None, progress: bool = False) -> DetectorPipeline:
        """Fit the detector on in-distribution images and calibrate the threshold for ``fpr``.

        Args:
            X: uint8 in-distribution images ``[N, *input_shape]``.
            y: their class labels (needed by mahalanobis and rmd).
            X_calibration: held-out in-distribution images for the threshold; without them a share ``holdout`` of
                ``X`` (seeded) is kept apart.
            progress: show progress bars.

        Returns:
            The detector.
        """
        images = collect_samples(X)
        labels = torch.as_tensor(y) if y is not None else None
        if X_calibration is None:
            if not 0.0 < self.holdout < 1.0:
                raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
            n_cal = max(1, round(self.holdout * len(images)))
            cal, keep = perm[:n_cal].sort().values, perm[n_cal:].sort().values
            images, X_calibration = images[keep], images[cal]
            labels = labels[keep] if labels is not None else None
        if len(images) < 2:
            raise InputError(f"fit needs at least 2 in-distribution images, got {len(images)}")
        calibration_images = collect_samples(X_calibration)
        train = self.extract(images, progress, "features (fit)")
        calibration = self.extract(calibration_images, progress, "features (calibration)")
        self.fit_outputs(train, labels, calibration)
        self.parity_images_ = calibration_images[:PARITY_IMAGES].clone()
        return self

    def fit_outputs(self, train: ClassifierOutputs, labels: Tensor | None, calibration: ClassifierOutputs
                    ) -> DetectorPipeline:
        """Fit from the extractor's outputs already computed (what :meth:`fit` does after extracting)."""
        if not 0.0 <= self.fpr <= 1.0:
            raise ConfigError(f"fpr must be in [0, 1], got {self.fpr}")
        self.head_, residual = self._head(train)
        stage = make_stage(self.method, self.head_, self.flow, self.score, self.score_options)
        if stage.uses_logits and train.logits is None and self.head_ is None:
            raise ConfigError(f"the {self.method} detector needs logits, and this feature extractor gives features "
                              "only; choose a detector that needs features alone (flow, mahalanobis, rmd, knn)")
        if stage.uses_labels and labels is None:
            raise ConfigError(f"the {self.method} detector needs the class labels of the in-distribution images")
        self.stage_ = stage.fit(train, labels)
        self.reference_scores_ = self.stage_.score(calibration)
        self.provenance_ = {"fitted": time.strftime("%Y-%m-%d %H:%M:%S"), "fit_samples": len(train),
                            "calibration_samples": len(calibration), "feature_dim": int(train.features.shape[1]),
                            "head": ("the classifier's last layer" if self.extractor.head() is not None else
                                     f"recovered by least squares (relative residual {residual:.1e})"
                                     if self.head_ is not None else None)}
        self.calibrate()
        return self

    def _head(self, train: ClassifierOutputs) -> tuple[ClassifierHead | None, float]:
        head = self.extractor.head()
        if head is not None:
            return ClassifierHead(*head, source="the classifier's last layer"), 0.0
        return linear_head(train)

    # -- scoring ------------------------------------------------------------------------------------------------
    def anomaly_score(self, X: Any) -> np.ndarray:
        """One score per image in the detector's units; higher means more anomalous."""
        self.check_fitted()
        engine = getattr(self, "engine_", None)
        if engine is not None:
            return engine.score(collect_samples(X))
        return self.stage_.score(self.extract(X))

    def score_outputs(self, outputs: ClassifierOutputs) -> np.ndarray:
        """Anomaly scores of the extractor's outputs already computed (:meth:`extract`)."""
        self.check_fitted()
        return self.stage_.score(outputs)

    @property
    def score_name(self) -> str:
        """The detector's name: the classifier-based detector, or ``flow:SCORE``."""
        return f"flow:{self.score}" if self.method == "flow" else self.method

    def graph(self) -> nn.Module:
        """uint8 images -> ``(score, ood)``: the whole fitted pipeline as torch operations (what export writes), on
        copies (the pipeline itself stays where it is)."""
        self.check_fitted()
        return PipelineGraph(copy.deepcopy(self.extractor), self.stage_.graph(), self.threshold_)

    # -- files --------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False, inputs: list[Any] | None = None,
             parity_images: Tensor | None = None) -> Path:
        """Write the fitted pipeline as one file: the extractor, the detector's fitted state, the calibration scores
        and the threshold, the provenance, a few in-distribution images for export's parity check.

        Raises:
            OutputError: ``path`` is not a file flowood may write (see :func:`flowood.outputs.check_output_file`).
        """
        self.check_fitted()
        check_output_file(path, is_detector_file, inputs or [], overwrite)
        if parity_images is None:
            parity_images = getattr(self, "parity_images_", None)
        head = self.head_
        payload = {"format": PIPELINE_FORMAT, "flowood_version": __version__, "method": self.method,
                   "score": self.score, "fpr": float(self.fpr), "holdout": float(self.holdout),
                   "batch_size": int(self.batch_size), "seed": int(self.seed),
                   "extractor": self.extractor.spec(), "detector": self.stage_.state(),
                   "head": {"weight": head.weight, "bias": head.bias, "source": head.source} if head else None,
                   "reference_scores": torch.from_numpy(np.asarray(self.reference_scores_, dtype=np.float64)),
                   "input_shape": list(self.input_shape), "provenance": plain_tree(self.provenance_),
                   "selection": plain_tree(getattr(self, "selection_", None)),
                   "parity_images": parity_images if parity_images is not None else torch.zeros(0, dtype=torch.uint8)}
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], device: str = "cpu") -> DetectorPipeline:
        """A fitted pipeline from the contents of its file (no refitting)."""
        extractor = extractor_from_spec(payload["extractor"])
        head = payload.get("head")
        head = ClassifierHead(head["weight"], head["bias"], head.get("source", "")) if head else None
        if payload["method"] == "flow":
            stage = FlowStage.from_state(payload["detector"])
        else:
            stage = make_classifier_detector(payload["method"], head).load_state(payload["detector"])
        pipeline = cls(extractor, payload["method"], payload["fpr"], payload["holdout"],
                       getattr(stage, "flow", None), payload["score"],
                       (payload["detector"].get("score_options") or None) if payload["method"] == "flow" else None,
                       batch_size=payload["batch_size"], seed=payload["seed"])
        dev = resolve_device(device)
        extractor.to(dev)
        if isinstance(stage, FlowStage):
            stage.flow.to(dev)
        pipeline.stage_, pipeline.head_ = stage, head
        pipeline.reference_scores_ = payload["reference_scores"].numpy()
        pipeline.provenance_ = dict(payload.get("provenance") or {})
        pipeline.selection_ = payload.get("selection")
        kept = payload.get("parity_images")
        pipeline.parity_images_ = kept if kept is not None and len(kept) else None
        pipeline.calibrate()
        return pipeline


class PipelineGraph(nn.Module):
    """A fitted pipeline as one module: uint8 images ``[B, *input_shape]`` -> ``(score [B], ood [B])``.

    ``ood`` is ``score > threshold`` at the threshold the pipeline had when the graph was made; flowood's own
    engine scoring reads ``score`` and applies the detector file's threshold, which can be moved without refitting.
    """

    def __init__(self, extractor: nn.Module, detector: nn.Module, threshold: float) -> None:
        super().__init__()
        self.extractor, self.detector = extractor, detector
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features, logits = self.extractor(images)
        score = self.detector(features, logits).float()
        return score, score > self.threshold


def read_detector_payload(path: str | Path) -> dict[str, Any]:
    """The contents of a detector file flowood wrote (a flow's or a pipeline's), read without unpickling code.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or not a flowood detector.
    """
    payload = read_weights_file(path, what="detector")
    if not isinstance(payload, dict) or payload.get("format") not in DETECTOR_FILE_FORMATS:
        raise CheckpointError(f"{path} is not a flowood detector (write one with `flowood detector fit` or "
                              "OODDetector.save / DetectorPipeline.save)")
    return payload


def read_detector(path: str | Path, device: str = "cpu", backend: str = "torch",
                  flow_export: str | Path | None = None) -> OODDetector | DetectorPipeline:
    """A detector file flowood wrote, ready to score: a pixel flow's (:class:`~flowood.ood.OODDetector`) or a
    pipeline's (:class:`DetectorPipeline`).

    Args:
        path: the detector file.
        device: where the model scores (engines score on the CPU; ``auto`` means it for them).
        backend: ``torch``, or ``onnxruntime`` / ``openvino``: a pixel flow's detector scores its flow on that engine
            (see :meth:`OODDetector.load <flowood.ood.OODDetector.load>`); a pipeline stays in PyTorch here (the
            engine scores it as one exported graph: :func:`flowood.deploy.load_detector`).
        flow_export: a pixel flow's detector only: an export folder of its flow to score on with the engine
            ``backend`` (see :meth:`OODDetector.load <flowood.ood.OODDetector.load>`).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or not a flowood detector. ConfigError:
            ``flow_export`` for a pipeline, or of another flow.
    """
    payload = read_detector_payload(path)
    if payload["format"] != PIPELINE_FORMAT:
        return OODDetector.from_payload(payload, path, device=device, backend=backend, flow_export=flow_export)
    if flow_export is not None:
        raise ConfigError("flow_export applies to a flow's detector; a pipeline is exported whole, from its detector "
                          "file (export_detector), and that folder is scored as it is")
    check_version(payload.get("flowood_version", "unknown"), path, what="detector")
    return DetectorPipeline.from_payload(payload, engine_device(backend, device))


def detector_info(path: str | Path) -> dict[str, Any]:
    """What a detector file holds and where it came from, as plain data (``flowood detector info`` prints it): the
    kind and its parts, the classifier and flow with their hashes, the data it was fitted on, the threshold and the
    false-positive rate it was calibrated at, the fit date, the flowood version, and a selection's ranking.

    Raises:
        CheckpointError: not a flowood detector file.
    """
    payload = read_detector_payload(path)
    prov = dict(payload.get("provenance") or {})
    reference = payload["reference_scores"].double().numpy()
    fpr = float(payload["fpr"])
    info: dict[str, Any] = {"file": str(path), "sha256": file_sha256(path)}
    if payload["format"] == PIPELINE_FORMAT:
        method = payload["method"]
        info["kind"] = f"pipeline: images -> classifier features -> {method if method != 'flow' else 'a flow'}"
        info["input"] = f"uint8 images {'x'.join(map(str, payload['input_shape']))} (others are adapted, and said so)"
        info["extractor"] = prov.get("extractor")
        info["classifier"] = prov.get("classifier")
        info["detector"] = (f"{payload['detector']['flow_config'].get('flow')} on the features, "
                            f"{payload['detector']['score']} score" if method == "flow" else
                            f"{method} ({CLASSIFIER_DETECTORS[method].reference}; needs "
                            f"{CLASSIFIER_DETECTORS[method].needs}; pytorch-ood "
                            f"{CLASSIFIER_DETECTORS[method].pytorch_ood})")
        info["flow"] = prov.get("flow")
        info["head"] = prov.get("head")
    else:
        config = payload["flow_config"]
        info["kind"] = f"a flow on the inputs: {config.get('flow')} on {'x'.join(map(str, payload['input_shape']))}"
        info["detector"] = f"{payload['score']} score"
        info["checkpoint"] = prov.get("checkpoint") or payload.get("source")
    info["data"] = {"dataset": prov.get("dataset"), "fit_samples": prov.get("fit_samples"),
                    "calibration_samples": prov.get("calibration_samples", len(reference)), "seed": prov.get("seed"),
                    "images_adapted": prov.get("images_adapted")}
    info["threshold"] = {"value": calibrated_threshold(reference, fpr), "fpr": fpr,
                         "calibration_scores": {"n": len(reference), "min": float(reference.min()),
                                                "median": float(np.median(reference)), "max": float(reference.max())}}
    info["fitted"] = prov.get("fitted", "not recorded (a file from flowood 0.2)")
    info["flowood_version"] = payload.get("flowood_version")
    info["torch_version"] = prov.get("torch_version")
    info["selection"] = payload.get("selection")
    return {k: v for k, v in info.items() if v is not None}
