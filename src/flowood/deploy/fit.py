"""Fitting a detector into one file: a pixel flow's (a checkpoint and a score), or a pipeline on a classifier's
features (a classifier, and a flow or a classifier-based detector on its features).

``flowood detector fit --checkpoint CKPT`` keeps what it always did: the flow, a score and a threshold. With
``--classifier C`` it fits a :class:`~flowood.deploy.pipeline.DetectorPipeline`: the classifier becomes the
feature extractor, ``--method`` the detector (``flow``: a flow on the features, trained here unless
``--checkpoint`` gives one; or any classifier-based detector), and the threshold is calibrated on held-out
in-distribution images.

Data: ``fit_samples`` in-distribution *training* images, chosen at random with ``seed`` exactly as ``flowood
evaluate --fit_samples N`` chooses its fitting samples (so the two give the same detector), and a disjoint
``holdout`` share more of the training split to calibrate the threshold. The test split stays untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowood import __version__
from flowood.checkpoints import load_flow
from flowood.data import ArrayDataset, adapt_images, dataset_inputs, fit_to_shape, load_dataset
from flowood.deploy.pipeline import (
    DEFAULT_HOLDOUT,
    FEATURE_FLOW_SCORES,
    METHODS,
    PARITY_IMAGES,
    DetectorPipeline,
    check_flow_score,
)
from flowood.embed.extractors import FeatureExtractor, load_extractor
from flowood.errors import DataError, closest
from flowood.flows import FlowModel
from flowood.ood.classifier import CLASSIFIER_DETECTORS, ClassifierOutputs
from flowood.ood.detector import OODDetector, is_detector_file
from flowood.ood.scores import ScoreOptions
from flowood.options import ConfigError, merge_options, option
from flowood.outputs import atomic_write, check_output_file, open_output_folder
from flowood.runtime import data_root_option, device_option, resolve_device, seed_option
from flowood.training import load_config
from flowood.training import train as train_flow
from flowood.training.config import config_path

__all__ = ["DetectorOptions", "fit_detector", "fit_pipeline", "split_fit_calibration", "PipelineData",
           "pipeline_data", "load_images", "train_feature_flow", "feature_flow", "check_extractor",
           "pipeline_provenance"]


@dataclass
class DetectorOptions:
    """How ``flowood detector fit`` builds a detector: every field is an option."""

    method: str | None = option(None, lambda: "with `classifier`: the detector on its features: flow (a flow on "
                                f"the features) or a classifier-based detector ({', '.join(CLASSIFIER_DETECTORS)}) "
                                "(default: mahalanobis; for select: the best on the validation sets)",
                                metavar="METHOD")
    score: str = option("likelihood", "the flow's OOD score (`flowood evaluate` lists them; a flow on features "
                        f"takes {', '.join(FEATURE_FLOW_SCORES)})", metavar="SCORE")
    fpr: float = option(0.05, "share of in-distribution inputs flagged as OOD (sets the threshold)", minimum=0.0)
    dataset: str | None = option(None, "in-distribution data to fit and calibrate on (default: the checkpoint's "
                                 "training set)", metavar="NAME")
    fit_samples: int = option(5000, "in-distribution training samples used to fit (chosen as flowood evaluate "
                              "`fit_samples` chooses them)", minimum=2)
    holdout: float = option(DEFAULT_HOLDOUT, "share of the in-distribution images kept apart to calibrate the "
                            "threshold (with `classifier`: training images beside the fit samples, e.g. 0.2 of "
                            "12,500 with 10,000 to fit; a flow's scores that fit keep it apart from the fit samples)",
                            minimum=0.0)
    score_options: ScoreOptions = option(default_factory=ScoreOptions, help="the flow scores' own options (given by "
                                         "their own names)", flag=False)
    backbone: str = option("auto", "with `classifier`: the torchvision architecture of a plain state_dict file (auto: "
                           "flowood's classifier files say their own)", metavar="NAME")
    image_size: int | None = option(None, "with `classifier`: resize images to this before the backbone (default: "
                                    "the classifier's own transform)", minimum=1)
    flow_config: str = option("features", "with `method='flow'` and no `checkpoint`: the training config of the flow "
                              "on the features (a YAML file or a shipped config)", metavar="YAML")
    max_minutes: float | None = option(None, "with `method='flow'` and no `checkpoint`: stop training the flow after "
                                       "this many minutes (default: the config's)", minimum=0.0)
    flow_out: str | None = option(None, "with `method='flow'` and no `checkpoint`: keep the flow's training run (the "
                                  "features, checkpoints, logs) in this folder (default: a temporary one)",
                                  metavar="DIR")
    batch_size: int = option(256, "images through the classifier at once", minimum=1)
    device: str = device_option()
    data_root: str | None = data_root_option()
    seed: int = seed_option()


def fit_detector(checkpoint: str | Path | None = None, out: str | Path | None = None,
                 options: DetectorOptions | None = None, *, classifier: str | Path | None = None,
                 overwrite: bool = False, progress: bool = True, **option_values: Any
                 ) -> OODDetector | DetectorPipeline:
    """Fit a detector and (with ``out``) save it as one file.

    Without ``classifier``: a pixel flow's detector (``checkpoint``, ``score``); the score is fitted on a seeded
    random subset of the in-distribution *training* split (``fit_samples``), and the threshold calibrated on
    held-out samples of it. With ``classifier``: a :class:`~flowood.deploy.pipeline.DetectorPipeline` (see
    :func:`fit_pipeline`).

    Raises:
        OutputError: ``out`` is not a file flowood may write (checked before any data are loaded).
    """
    o = merge_options(DetectorOptions, options, option_values)
    if classifier is not None:
        return fit_pipeline(classifier, out, o, checkpoint=checkpoint, overwrite=overwrite, progress=progress)
    if checkpoint is None:
        raise ConfigError("pass a `checkpoint` (a flow on the inputs) or a `classifier` (a detector on its features)")
    loaded = load_flow(checkpoint)
    dataset = o.dataset or loaded.train_config.get("dataset")
    if not dataset:
        raise ConfigError("the checkpoint does not say which data set it was trained on; pass `dataset`")
    root = o.data_root or loaded.train_config.get("data_root")
    if out is not None:
        check_output_file(out, is_detector_file, [checkpoint, *dataset_inputs([dataset], root)], overwrite)
    flow = loaded.flow.to(resolve_device(o.device)).eval()
    options = {"typicality_batch": o.score_options.typicality_batch, "seed": o.seed}
    if o.score == "likelihood_ratio":
        options["background_steps"] = o.score_options.background_steps
    detector = OODDetector(flow, o.score, o.fpr, o.holdout, options)
    train = load_dataset(dataset, "train", root, shape=flow.input_shape).take(o.fit_samples, seed=o.seed)
    detector.fit(fit_to_shape(train, flow.input_shape))
    detector.provenance_ = {"dataset": dataset, "fit_samples": len(train), "seed": o.seed,
                            "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": loaded.sha256}}
    if out is not None:
        detector.save(out, overwrite=True)  # checked above, before the work
    return detector


def split_fit_calibration(n: int, fit_samples: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the fitting and the calibration samples of a training split of ``n``, disjoint and sorted.

    The fitting indices are those ``ArrayDataset.take(len(fit), seed)`` chooses (the first of one seeded
    permutation), so ``flowood evaluate --fit_samples len(fit) --seed seed`` fits on the same samples; the
    calibration indices come next in the permutation, so that they are a share ``holdout`` of the two together.
    When the split is too small for ``fit_samples`` and their calibration samples, a share ``holdout`` of it
    calibrates and the rest fits (fewer than ``fit_samples``: pass the number used to ``evaluate``).

    Raises:
        ConfigError: ``holdout`` outside (0, 1). DataError: too few samples for both.
    """
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
    n_fit = min(fit_samples, n)
    n_cal = max(1, round(holdout * n_fit / (1.0 - holdout)))
    if n_fit + n_cal > n:
        n_cal = max(1, round(holdout * n))
        n_fit = n - n_cal
    if n_fit < 2:
        raise DataError(f"the training split has {n} samples; a detector needs at least 3 (2 to fit, 1 to calibrate)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_fit].sort().values, perm[n_fit:n_fit + n_cal].sort().values


@dataclass
class PipelineData:
    """The in-distribution images a pipeline is fitted on, in the extractor's shape.

    Attributes:
        fit, calibration: uint8 images of the fitting and calibration samples.
        labels: the fitting samples' class labels (None if the set has none).
        dataset: its name. adapted: how its images were converted to the extractor's shape (None: not at all).
    """

    fit: Tensor
    calibration: Tensor
    labels: Tensor | None
    dataset: str
    adapted: str | None = None
    fit_index: Tensor | None = None
    calibration_index: Tensor | None = None


def load_images(dataset: str, root: str | None = None) -> ArrayDataset:
    """The training split of an image set.

    Raises:
        DataError: a set of vectors, not images.
    """
    train = load_dataset(dataset, "train", root)
    if not train.is_image:
        raise DataError(f"{dataset} holds vectors, not images; a detector on a classifier's features is fitted on "
                        "images (train a flow on the vectors and fit a detector on its `checkpoint` instead)")
    return train


def pipeline_data(train: ArrayDataset, dataset: str, shape: tuple[int, ...], fit_samples: int, holdout: float,
                  seed: int) -> PipelineData:
    """A training split (:func:`load_images`) split into fitting and calibration images
    (:func:`split_fit_calibration`), adapted to ``shape`` (gray/RGB, size) where it differs, which is said in
    ``adapted``."""
    fit_idx, cal_idx = split_fit_calibration(len(train), fit_samples, holdout, seed)
    adapted = None
    fit, calibration = train.data[fit_idx], train.data[cal_idx]
    if tuple(train.sample_shape) != tuple(shape):  # only the images used are adapted
        adapted = f"{'x'.join(map(str, train.sample_shape))} -> {'x'.join(map(str, shape))}"
        fit, calibration = adapt_images(fit, tuple(shape)), adapt_images(calibration, tuple(shape))
    labels = train.labels[fit_idx] if train.labels is not None else None
    return PipelineData(fit, calibration, labels, dataset, adapted, fit_idx, cal_idx)


def _check_method(o: DetectorOptions, labels_known: bool | None = None) -> None:
    if o.method not in METHODS:
        raise ConfigError(f"unknown method {o.method!r}{closest(o.method, METHODS)}; choose from {', '.join(METHODS)}")
    if o.method == "flow":
        check_flow_score(o.score, {"typicality_batch": o.score_options.typicality_batch})
    needs = CLASSIFIER_DETECTORS[o.method].needs if o.method in CLASSIFIER_DETECTORS else "features"
    if labels_known is False and "labels" in needs:
        raise DataError(f"the {o.method} detector needs class labels, and {o.dataset} has none; choose flow, knn, "
                        "or a detector on logits")


def _check_unused(o: DetectorOptions, classifier: str | Path, checkpoint: str | Path | None) -> None:
    """Refuse options given for a part the detector does not have (they would be ignored silently)."""
    defaults = DetectorOptions()
    given = [n for n in ("flow_config", "max_minutes", "flow_out") if getattr(o, n) != getattr(defaults, n)]
    if o.method != "flow":
        if checkpoint is not None or given:
            named = (["checkpoint"] if checkpoint is not None else []) + given
            raise ConfigError(f"{', '.join(f'`{n}`' for n in named)} {'applies' if len(named) == 1 else 'apply'} to "
                              f"a flow on the features (`method='flow'`), not to {o.method}")
    elif checkpoint is not None and given:
        raise ConfigError(f"{', '.join(f'`{n}`' for n in given)}: the flow is given (`checkpoint`), not trained")
    if str(classifier).endswith(".pt2") and (o.backbone != "auto" or o.image_size is not None):
        raise ConfigError("`backbone` and `image_size` apply to classifier files; a torch.export model takes the "
                          "images of the shape it was exported with, and resizes inside itself")


def check_extractor(extractor: FeatureExtractor, method: str) -> None:
    """Refuse, in one line, a detector that needs logits on an extractor that gives none."""
    needs = CLASSIFIER_DETECTORS[method].needs if method in CLASSIFIER_DETECTORS else "features"
    if ("logits" in needs or "head" in needs) and not extractor.gives_logits:
        raise ConfigError(f"the {method} detector needs the classifier's logits, and this model gives features only; "
                          "choose flow, mahalanobis, rmd or knn, or export a model that returns (features, logits)")


def fit_pipeline(classifier: str | Path, out: str | Path | None = None, options: DetectorOptions | None = None, *,
                 checkpoint: str | Path | None = None, overwrite: bool = False, progress: bool = True,
                 **option_values: Any) -> DetectorPipeline:
    """Fit a detector on a classifier's features, from raw in-distribution images, and save it as one file.

    Args:
        classifier: a classifier ``flowood embed`` wrote (or the embeddings it wrote), a torchvision ``state_dict``
            (with ``backbone``), or a ``torch.export`` program (``.pt2``); see :mod:`flowood.embed.extractors`.
        out: the detector file (checked before any data are loaded; None: not saved).
        options: a :class:`DetectorOptions`; ``dataset`` is required.
        checkpoint: for ``method="flow"``, a flow already trained on these features (otherwise one is trained with
            ``flow_config``, for at most ``max_minutes``).
        overwrite: replace an earlier detector file (and ``flow_out`` run) flowood wrote.
        progress: show progress bars.
        **option_values: any field of :class:`DetectorOptions`.

    Returns:
        The fitted :class:`~flowood.deploy.pipeline.DetectorPipeline`.

    Raises:
        ConfigError, DataError, CheckpointError, OutputError: named in the message.
    """
    o = merge_options(DetectorOptions, options, option_values)
    o = dataclasses.replace(o, method=o.method or "mahalanobis")
    if not o.dataset:
        raise ConfigError("a detector on a classifier's features needs the in-distribution images: pass `dataset`")
    _check_method(o)
    _check_unused(o, classifier, checkpoint)
    inputs = [classifier, checkpoint, *dataset_inputs([o.dataset], o.data_root)]
    if out is not None:
        check_output_file(out, is_detector_file, inputs, overwrite)
    device = resolve_device(o.device)
    images = load_images(o.dataset, o.data_root)
    extractor = load_extractor(classifier, images.sample_shape, o.backbone, o.image_size).to(device).eval()
    check_extractor(extractor, o.method)
    data = pipeline_data(images, o.dataset, extractor.input_shape, o.fit_samples, o.holdout, o.seed)
    _check_method(o, data.labels is not None)
    if data.adapted:
        import warnings

        warnings.warn(f"{o.dataset}'s images were adapted to the classifier's input ({data.adapted})", stacklevel=2)
    pipeline = DetectorPipeline(extractor, o.method, o.fpr, o.holdout, score=o.score,
                                score_options=_score_options(o), batch_size=o.batch_size, seed=o.seed)
    train = pipeline.extract(data.fit, progress, "features (fit)")
    calibration = pipeline.extract(data.calibration, progress, "features (calibration)")
    flow_info: dict[str, Any] = {}
    if o.method == "flow":
        pipeline.flow, flow_info = feature_flow(checkpoint, train, calibration, o, overwrite, progress, inputs)
        pipeline.flow.to(device)
    pipeline.fit_outputs(train, data.labels, calibration)
    pipeline.provenance_.update(pipeline_provenance(o, data, extractor, flow_info))
    if out is not None:
        pipeline.save(out, overwrite=True, inputs=inputs, parity_images=data.calibration[:PARITY_IMAGES].clone())
    return pipeline


def _score_options(o: DetectorOptions) -> dict[str, Any]:
    return {"seed": o.seed}


def pipeline_provenance(o: DetectorOptions, data: PipelineData, extractor: FeatureExtractor, flow: dict[str, Any]
                        ) -> dict[str, Any]:
    """What a pipeline's file records of how it was fitted (shown by ``flowood detector info``)."""
    return {"flowood_version": __version__, "torch_version": torch.__version__, "dataset": data.dataset,
            "data_root": o.data_root, "seed": o.seed, "images_adapted": data.adapted,
            "extractor": extractor.describe(), "classifier": extractor.source, "method": o.method,
            "score": o.score if o.method == "flow" else o.method, "flow": flow or None}


def feature_flow(checkpoint: str | Path | None, train: ClassifierOutputs, calibration: ClassifierOutputs,
                 o: DetectorOptions, overwrite: bool, progress: bool, inputs: list[Any]
                 ) -> tuple[FlowModel, dict[str, Any]]:
    """The flow on the features: the checkpoint given, or one trained here on the fitting features."""
    dim = int(train.features.shape[1])
    if checkpoint is not None:
        loaded = load_flow(checkpoint)
        if tuple(loaded.flow.input_shape) != (dim,):
            raise DataError(f"the flow in {checkpoint} takes {'x'.join(map(str, loaded.flow.input_shape))} inputs, "
                            f"and the classifier gives {dim}-dim features; train the flow on these features (or "
                            "leave out `checkpoint` to train one here)")
        return loaded.flow, {"checkpoint": str(Path(checkpoint).resolve()), "sha256": loaded.sha256}
    return train_feature_flow(train.features, calibration.features, o, overwrite=overwrite, progress=progress,
                              inputs=inputs)


def train_feature_flow(train: Tensor, test: Tensor, options: DetectorOptions | None = None, *,
                       overwrite: bool = False, progress: bool = True, inputs: list[Any] = (),
                       **option_values: Any) -> tuple[FlowModel, dict[str, Any]]:
    """Train a flow on feature vectors with ``flowood train`` (config ``flow_config``, at most ``max_minutes``),
    in ``flow_out`` (kept: ``features.npz`` and the run in ``train/``) or a temporary folder.

    Returns:
        The trained flow and what is known of its training (config, steps, minutes, held-out bits/dim, folder).
    """
    o = merge_options(DetectorOptions, options, option_values)
    config = config_path(o.flow_config)
    scratch = tempfile.TemporaryDirectory(prefix="flowood-feature-flow-") if o.flow_out is None else None
    root = Path(scratch.name) / "flow" if scratch is not None else Path(o.flow_out)
    with contextlib.ExitStack() as stack:
        if scratch is not None:
            stack.callback(scratch.cleanup)
        folder = stack.enter_context(open_output_folder(root, "detector fit", [*inputs, config], overwrite=overwrite))
        features = folder.path / "features.npz"
        with atomic_write(features) as tmp:
            np.savez(tmp, embeddings_train=train.numpy(), embeddings_test=test.numpy())
        cfg = load_config(config, {"dataset": f"npz:{features}", "out": str(folder.path / "train"), "seed": o.seed,
                                   "device": o.device, "max_minutes": o.max_minutes})
        result = train_flow(cfg, overwrite=overwrite, progress=progress, inputs=[config])
        folder.record_tree("train")
        flow = load_flow(result.checkpoint).flow
        return flow, {"config": str(o.flow_config), "flow": flow.config.get("flow"), "steps": result.steps,
                      "minutes": round(result.seconds / 60, 2), "held_out_bits_per_dim": round(result.test_bpd, 4),
                      "run": str(folder.path) if scratch is None else None}

