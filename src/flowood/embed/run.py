"""``flowood embed``: image sets -> feature vectors (``.npz``) for flows on embeddings.

The paper (Section 8) shows that a flow on a classifier's features detects OOD data that the
pixel-space flow misses. This module produces those features for the in-distribution set and any
OOD sets, all through one backbone and one input transform, from pretrained torchvision weights,
a weights file, or a classifier it trains on the in-distribution labels (for machines without
internet, where pretrained weights cannot be downloaded).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowood import __version__
from flowood.checkpoints import CLASSIFIER_FORMAT, read_weights_file
from flowood.data import ArrayDataset, adapt_images, dataset_inputs, load_dataset
from flowood.embed.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    build_backbone,
    feature_extractor,
    last_linear,
    pretrained_weights,
)
from flowood.errors import DataError
from flowood.options import merge_options, option
from flowood.outputs import atomic_write, check_output_file
from flowood.runtime import data_root_option, device_option, resolve_device, seed_option

__all__ = ["embed", "EmbedOptions", "EmbedResult", "Embedder", "make_embedder", "load_classifier", "save_classifier",
           "fit_classifier", "embed_images", "is_embed_output"]



@dataclass
class EmbedResult:
    """What :func:`embed` wrote.

    Attributes:
        out: the in-distribution embeddings (``embeddings_train``, ``embeddings_test``, labels, ``meta``).
        ood_files: OOD set name -> its embeddings file (``embeddings_test``, ``embeddings_train``).
        classifier: the classifier file (with ``--train-classifier``), reusable as ``--weights PATH``.
        test_accuracy: the classifier's accuracy on the in-distribution test set (None if unknown labels).
        dim: embedding dimension.
        warnings: things the user should know (e.g. many exact zeros in the features).
    """

    out: Path
    ood_files: dict[str, Path]
    classifier: Path | None
    test_accuracy: float | None
    dim: int
    seconds: float
    warnings: list[str] = field(default_factory=list)




def _batches(data: Tensor, batch_size: int, desc: str, progress: bool):
    starts = range(0, len(data), batch_size)
    return tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch")


def _logits(output: Any) -> Tensor:
    return output.logits if hasattr(output, "logits") else output  # inception/googlenet named tuples


def channel_stats(images: Tensor, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 images as the backbone will see them."""
    x = Preprocess(channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels)(images[:10000])
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def fit_classifier(model: nn.Module, preprocess: Preprocess, train: ArrayDataset, test: ArrayDataset | None,
                     epochs: int = 2, lr: float = 1e-3, batch_size: int = 128, device: str = "auto", seed: int = 0,
                     progress: bool = True) -> float | None:
    """Train ``model`` on the labels of ``train`` with Adam and cross-entropy; returns test accuracy."""
    if train.labels is None or int(train.labels.min()) < 0:
        raise DataError(f"{train.name} has no class labels, so no classifier can be trained on it; use "
                        "`weights='DEFAULT'` (pretrained) or `weights=PATH` instead of `train_classifier`")
    dev = resolve_device(device)
    model.to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc="classifier", disable=not progress, unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), batch_size):
            idx = order[start:start + batch_size]
            x = preprocess(train.data[idx].to(dev))
            loss = F.cross_entropy(_logits(model(x)), train.labels[idx].to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    if test is None or test.labels is None:
        return None
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test), 512):
            x = preprocess(test.data[start:start + 512].to(dev))
            correct += int((model(x).argmax(1).cpu() == test.labels[start:start + 512]).sum())
    return correct / len(test)


@torch.inference_mode()
def embed_images(extractor: nn.Module, preprocess: Preprocess, images: Tensor, batch_size: int = 256,
                 device: str = "auto", desc: str = "embed", progress: bool = True) -> np.ndarray:
    """Embeddings ``[N, D]`` (float32) of uint8 images ``[N, C, H, W]``."""
    dev = resolve_device(device)
    extractor.to(dev).eval()
    out = []
    for start in _batches(images, batch_size, desc, progress):
        features = extractor(preprocess(images[start:start + batch_size].to(dev)))
        out.append(features.flatten(1).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def save_classifier(path: Path, model: nn.Module, backbone: str, preprocess: Preprocess, info: dict[str, Any]) -> None:
    """Write a classifier that ``--weights PATH`` loads back (atomically: temporary file, then rename)."""
    head = last_linear(model)[2]
    payload = {"format": CLASSIFIER_FORMAT, "backbone": backbone, "num_classes": head.out_features,
               "preprocess": preprocess.to_dict(), "state_dict": model.state_dict(), "info": info}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_classifier(path: str | Path, backbone: str) -> tuple[nn.Module, Preprocess, str]:
    """A backbone and its transform from ``--weights PATH``: a classifier written by flowood, or a
    plain torchvision ``state_dict`` of ``backbone`` (then ImageNet's transform is used)."""
    path = Path(path)
    payload = read_weights_file(path, what="weights file")
    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        name = payload["backbone"]
        if backbone not in (name, "auto"):
            raise DataError(f"{path} holds a {name} classifier, not {backbone}; pass `backbone={name!r}`")
        preprocess = Preprocess.from_dict(payload["preprocess"])
        model = build_backbone(name, payload["num_classes"], in_channels=preprocess.channels,
                               embedding_dim=payload["info"].get("embedding_dim", 64))
        model.load_state_dict(payload["state_dict"])
        return model, preprocess, name
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise DataError(f"{path} is neither a flowood classifier nor a state_dict of tensors")
    if backbone == "auto":
        raise DataError(f"{path} is a plain state_dict: say which model it belongs to with `backbone`")
    weights = [k for k in payload if k.endswith(".weight") and payload[k].dim() == 2]
    num_classes = int(payload[weights[-1]].shape[0]) if weights else 1000
    model = build_backbone(backbone, num_classes)
    try:
        model.load_state_dict(payload)
    except RuntimeError as err:
        raise DataError(f"{path} does not fit {backbone}: {str(err).splitlines()[0]}") from err
    return model, Preprocess(channels=3, size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD), backbone


def _weights_preprocess(weights: Any) -> Preprocess:
    t = weights.transforms()
    return Preprocess(channels=3, size=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=tuple(t.mean),
                      std=tuple(t.std), interpolation=str(t.interpolation.value))


def _safe(name: str) -> str:
    base = name.split(":", 1)[1] if ":" in name else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(base).stem if ":" in name else base)


def _write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)


def is_embed_output(path: Path) -> bool:
    """True for files ``flowood embed`` writes: embeddings (``.npz`` with flowood's ``meta``) and classifiers."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return "meta" in f.files and "flowood_version" in json.loads(str(f["meta"]))
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT
    except Exception:
        return False


@dataclass
class EmbedOptions:
    """How :func:`embed` gets its features: every field is an option (``flowood embed --help`` shows them)."""

    backbone: str = option("smallcnn", "smallcnn (flowood's, fast on CPU) or any torchvision classification model, "
                           "e.g. resnet18, efficientnet_b4 (the paper's 1792-dim features)", metavar="NAME")
    weights: str | None = option(None, "DEFAULT (or a torchvision weights name) to download pretrained weights, or a "
                                 "file: a classifier from train_classifier, or a torchvision state_dict",
                                 metavar="WEIGHTS")
    train_classifier: bool = option(False, "train the backbone on the in-distribution labels first (no download)")
    epochs: int = option(2, "classifier training epochs", minimum=1)
    lr: float = option(1e-3, "classifier learning rate (Adam)", minimum=0.0)
    batch_size: int = option(128, "classifier training batch size", minimum=1)
    image_size: int | None = option(None, "resize images to this before the backbone (default: the data's size for "
                                    "a classifier trained here, the weights' own transform for pretrained ones)",
                                    minimum=1)
    embedding_dim: int = option(64, "feature size of smallcnn", minimum=1)
    max_train_samples: int | None = option(None, "use a random (seeded) subset of the training set", minimum=1)
    device: str = device_option()
    data_root: str | None = data_root_option()
    seed: int = seed_option()


@dataclass
class Embedder:
    """A feature extractor and its input transform, and where it came from."""

    model: nn.Module
    preprocess: Preprocess
    backbone: str
    source: str
    accuracy: float | None = None


def embed(dataset: str, out: str | Path, ood: tuple[str, ...] | list[str] = (), options: EmbedOptions | None = None,
          *, progress: bool = True, overwrite: bool = False, **option_values: Any) -> EmbedResult:
    """Embed ``dataset`` (train and test) and each ``ood`` set (test) with one backbone.

    Args:
        dataset: the in-distribution image set.
        out: the ``.npz`` to write; OOD sets go to ``<out stem>-<name>.npz`` and a classifier trained here to
            ``<out stem>.classifier.pt`` beside it. Every target is checked before any data are loaded.
        ood: OOD image sets, embedded through the same adaptation, backbone and transform.
        options: an :class:`EmbedOptions` (its fields are listed there).
        progress: show progress bars.
        overwrite: replace earlier embeddings at those paths (only files flowood wrote).
        **option_values: any field of :class:`EmbedOptions`, e.g. ``backbone="resnet18", weights="DEFAULT"``.

    Returns:
        :class:`EmbedResult`.

    Raises:
        OutputError: a target is an input, lies in an input folder, or is a file flowood did not write.
        DataError, CheckpointError: data or weights that cannot be used, named in the message.
    """
    o = merge_options(EmbedOptions, options, option_values)
    start = time.time()
    torch.manual_seed(o.seed)
    out, ood_files, classifier_path = _check_targets(dataset, Path(out), list(ood), o, overwrite)
    train = load_dataset(dataset, "train", o.data_root).take(o.max_train_samples, o.seed)
    test = load_dataset(dataset, "test", o.data_root)
    if not train.is_image:
        raise DataError(f"{dataset} holds vectors, not images; it can be used with a tabular flow directly")
    embedder = make_embedder(train, test, o, progress)
    arrays = _embed_splits(embedder, {"train": train, "test": test}, dataset, o, progress)
    arrays.update(_head_arrays(embedder.model))
    meta = {"backbone": embedder.backbone, "weights": embedder.source, "dataset": dataset,
            "preprocess": embedder.preprocess.to_dict(), "classifier_test_accuracy": embedder.accuracy,
            "flowood_version": __version__, "seed": o.seed, "in_distribution_shape": list(train.sample_shape)}
    if classifier_path is not None:
        save_classifier(classifier_path, embedder.model, embedder.backbone, embedder.preprocess,
                        {"dataset": dataset, "test_accuracy": embedder.accuracy, "embedding_dim": o.embedding_dim,
                         "epochs": o.epochs, "seed": o.seed})
    _write_npz(out, arrays, meta)
    for name, path in ood_files.items():
        _embed_ood(embedder, name, path, train.sample_shape, meta, o, progress)
    return EmbedResult(out, ood_files, classifier_path, embedder.accuracy, int(arrays["embeddings_train"].shape[1]),
                       time.time() - start, _zero_warning(arrays["embeddings_train"]))


def _check_targets(dataset: str, out: Path, ood: list[str], o: EmbedOptions, overwrite: bool
                   ) -> tuple[Path, dict[str, Path], Path | None]:
    """Every file embed will write, checked (and its folder test-written) before any data are loaded."""
    if out.suffix != ".npz":
        raise DataError(f"`out` must name an .npz file, got {out}")
    if o.weights is None and not o.train_classifier:
        raise DataError("features of an untrained backbone are meaningless: pass `weights='DEFAULT'` (pretrained, "
                        "downloads), `weights=PATH` (a weights file), or `train_classifier=True` (train on the "
                        "labels here)")
    ood_files = {name: out.with_name(f"{out.stem}-{_safe(name)}.npz") for name in ood}
    classifier_path = out.with_name(f"{out.stem}.classifier.pt") if o.train_classifier else None
    weights_file = o.weights if o.weights and Path(o.weights).expanduser().exists() else None
    inputs = [*dataset_inputs([dataset, *ood], o.data_root), weights_file]
    for target in [out, classifier_path, *ood_files.values()]:
        if target is not None:
            check_output_file(target, is_embed_output, inputs, overwrite)
    return out, ood_files, classifier_path


def make_embedder(train: ArrayDataset, test: ArrayDataset, o: EmbedOptions, progress: bool = True) -> Embedder:
    """The backbone and transform: from a weights file, from pretrained torchvision weights, or trained here on
    ``train``'s labels (then its ``test`` accuracy is measured)."""
    weights_file = Path(o.weights).expanduser() if o.weights else None
    if weights_file is not None and weights_file.is_file():
        if o.train_classifier:
            raise DataError("`weights` already names a trained classifier; drop `train_classifier` (or start from "
                            "pretrained torchvision weights with `weights='DEFAULT'`)")
        model, preprocess, backbone = load_classifier(weights_file, o.backbone)
        embedder = Embedder(model, preprocess, backbone, str(weights_file.resolve()))
    elif o.weights is not None and o.backbone == "smallcnn":
        raise DataError(f"smallcnn has no pretrained weights, and {o.weights!r} is not a file; use "
                        "`train_classifier=True`, or a torchvision backbone with `weights='DEFAULT'`")
    elif o.train_classifier:
        embedder = _train_embedder(train, test, o, progress)
    else:
        enum = pretrained_weights(o.backbone, o.weights)
        embedder = Embedder(build_backbone(o.backbone, weights=enum), _weights_preprocess(enum), o.backbone,
                            str(o.weights))
    if o.image_size is not None:
        embedder.preprocess.size, embedder.preprocess.crop = o.image_size, o.image_size
    return embedder


def _train_embedder(train: ArrayDataset, test: ArrayDataset, o: EmbedOptions, progress: bool) -> Embedder:
    enum = pretrained_weights(o.backbone, o.weights) if o.weights is not None else None
    in_channels = train.sample_shape[0]
    num_classes = int(train.labels.max()) + 1 if train.labels is not None else 0
    model = build_backbone(o.backbone, num_classes, in_channels=in_channels, weights=enum,
                           embedding_dim=o.embedding_dim)
    channels = in_channels if o.backbone == "smallcnn" else 3
    mean, std = channel_stats(train.data, channels)
    if enum is not None:
        mean, std = tuple(enum.transforms().mean), tuple(enum.transforms().std)
    preprocess = Preprocess(channels=channels, size=o.image_size, mean=mean, std=std)
    accuracy = fit_classifier(model, preprocess, train, test, o.epochs, o.lr, o.batch_size, o.device, o.seed,
                              progress)
    return Embedder(model, preprocess, o.backbone, o.weights or "trained here", accuracy)


def _embed_splits(embedder: Embedder, splits: dict[str, ArrayDataset], dataset: str, o: EmbedOptions,
                  progress: bool) -> dict[str, np.ndarray]:
    extractor = feature_extractor(embedder.model)
    arrays: dict[str, np.ndarray] = {}
    for split, ds in splits.items():
        arrays[f"embeddings_{split}"] = embed_images(extractor, embedder.preprocess, ds.data, o.batch_size * 2,
                                                     o.device, f"{dataset}:{split}", progress)
        if ds.labels is not None:
            arrays[f"labels_{split}"] = ds.labels.numpy()
    return arrays


def _head_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The classifier's last linear layer (``logits = embedding @ weight.T + bias``), kept with the embeddings so
    that classifier-based detectors (:mod:`flowood.ood.classifier`) can be computed from them."""
    head = last_linear(model)[2]
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    return {"classifier_weight": head.weight.detach().float().cpu().numpy(),
            "classifier_bias": bias.detach().float().cpu().numpy()}


def _embed_ood(embedder: Embedder, name: str, path: Path, shape: tuple[int, ...], meta: dict[str, Any],
               o: EmbedOptions, progress: bool) -> None:
    """One OOD set's test split, adapted to the in-distribution shape, through the same backbone."""
    ds = load_dataset(name, "test", o.data_root, shape=shape)
    if not ds.is_image:
        raise DataError(f"OOD set {name} holds vectors, not images")
    images = adapt_images(ds.data, shape)
    vectors = embed_images(feature_extractor(embedder.model), embedder.preprocess, images, o.batch_size * 2,
                           o.device, f"{name}:test", progress)
    arrays = {"embeddings_test": vectors}
    if ds.labels is not None:
        arrays["labels_test"] = ds.labels.numpy()
    _write_npz(path, arrays, {**meta, "dataset": name, "adapted_to": list(shape)})


def _zero_warning(features: np.ndarray) -> list[str]:
    zeros = float((features == 0).mean())
    if zeros <= 0.01:
        return []
    return [f"{100 * zeros:.0f}% of the feature values are exactly 0 (ReLU features pooled over a tiny map): a flow "
            "can give such point masses unbounded density. Prefer `image_size=64` or more, or the smallcnn backbone, "
            "whose features have no activation"]
