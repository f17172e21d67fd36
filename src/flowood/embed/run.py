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

from flowood.data import ArrayDataset, adapt_images, dataset_inputs, load_dataset
from flowood.errors import DataError
from flowood.outputs import atomic_write, check_output_file
from flowood.embed.backbones import (IMAGENET_MEAN, IMAGENET_STD, Preprocess, build_backbone, feature_extractor,
                                     last_linear, pretrained_weights)

__all__ = ["embed", "EmbedResult", "load_classifier", "save_classifier", "fit_classifier", "embed_images"]

CLASSIFIER_FORMAT = "flowood-classifier-1"


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


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        raise ValueError(f"{train.name} has no class labels, so no classifier can be trained on it; "
                         "use --weights DEFAULT (pretrained) or --weights PATH instead of --train-classifier")
    dev = _device(device)
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
    dev = _device(device)
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
    from flowood.checkpoints import read_weights_file

    path = Path(path)
    payload = read_weights_file(path, what="weights file")
    if isinstance(payload, dict) and payload.get("format") == CLASSIFIER_FORMAT:
        name = payload["backbone"]
        if backbone not in (name, "auto"):
            raise ValueError(f"{path} holds a {name} classifier, not {backbone}; pass --backbone {name}")
        preprocess = Preprocess.from_dict(payload["preprocess"])
        model = build_backbone(name, payload["num_classes"], in_channels=preprocess.channels,
                               embedding_dim=payload["info"].get("embedding_dim", 64))
        model.load_state_dict(payload["state_dict"])
        return model, preprocess, name
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise ValueError(f"{path} is neither a flowood classifier nor a state_dict of tensors")
    if backbone == "auto":
        raise ValueError(f"{path} is a plain state_dict: say which model it belongs to with --backbone NAME")
    weights = [k for k in payload if k.endswith(".weight") and payload[k].dim() == 2]
    num_classes = int(payload[weights[-1]].shape[0]) if weights else 1000
    model = build_backbone(backbone, num_classes)
    try:
        model.load_state_dict(payload)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {backbone}: {str(err).splitlines()[0]}") from err
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
    except Exception:  # noqa: BLE001 - anything unreadable is not a file flowood wrote
        return False


def embed(backbone: str = "smallcnn", dataset: str = "fashionmnist", out: str | Path = "runs/embeddings/emb.npz",
          ood: tuple[str, ...] | list[str] = (), weights: str | None = None, train_classifier: bool = False,
          epochs: int = 2, lr: float = 1e-3, batch_size: int = 128, image_size: int | None = None,
          embedding_dim: int = 64, device: str = "auto", data_root: str | None = None,
          max_train_samples: int | None = None, seed: int = 0, overwrite: bool = False,
          progress: bool = True) -> EmbedResult:
    """Embed ``dataset`` (train and test) and each ``ood`` set (test) with one backbone.

    Args:
        backbone: ``smallcnn`` or any torchvision classification model name.
        weights: ``DEFAULT`` (or a torchvision weights name: downloaded), a file (a flowood classifier
            or a torchvision state_dict), or None together with ``train_classifier``.
        train_classifier: first train the backbone as a classifier on ``dataset``'s labels (from
            ``weights`` if given, else from scratch); the classifier is saved beside ``out``.
        image_size: resize images to this before the backbone (None: the data set's size when a
            classifier is trained here, the weights' own transform for pretrained weights, 224 for a
            plain torchvision state_dict).
        embedding_dim: embedding size of ``smallcnn``.
        max_train_samples: use a random subset of the training set (seeded).

    Returns:
        :class:`EmbedResult`. Files: ``out`` and, per OOD set, ``<out stem>-<name>.npz``.
    """
    from flowood import __version__

    start = time.time()
    torch.manual_seed(seed)
    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"`out` must name an .npz file, got {out}")
    ood_files = {name: out.with_name(f"{out.stem}-{_safe(name)}.npz") for name in ood}
    classifier_path = out.with_name(f"{out.stem}.classifier.pt") if train_classifier else None
    inputs = [*dataset_inputs([dataset, *ood], data_root), weights if weights and Path(weights).exists() else None]
    for target in [out, classifier_path, *ood_files.values()]:
        if target is not None:
            check_output_file(target, is_embed_output, inputs, overwrite)  # before any data are loaded
    if weights is None and not train_classifier:
        raise ValueError("features of an untrained backbone are meaningless: pass --weights DEFAULT (pretrained, "
                         "downloads), --weights PATH (a weights file), or --train-classifier (train on the labels here)")
    train = load_dataset(dataset, "train", data_root).take(max_train_samples, seed)
    test = load_dataset(dataset, "test", data_root)
    if not train.is_image:
        raise ValueError(f"{dataset} holds vectors, not images; it can be used with a tabular flow directly")
    in_channels = train.sample_shape[0]
    accuracy = None
    weight_source = weights
    if weights is not None and Path(weights).expanduser().is_file():
        model, preprocess, backbone = load_classifier(Path(weights).expanduser(), backbone)
        weight_source = str(Path(weights).expanduser().resolve())
        if train_classifier:
            raise ValueError("--weights PATH already holds a trained classifier; drop --train-classifier "
                             "(or start from pretrained torchvision weights with --weights DEFAULT)")
    elif weights is not None and backbone == "smallcnn":
        raise ValueError(f"smallcnn has no pretrained weights, and {weights!r} is not a file; "
                         "use --train-classifier, or a torchvision backbone with --weights DEFAULT")
    else:
        enum = pretrained_weights(backbone, weights) if weights is not None else None
        if train_classifier:
            num_classes = int(train.labels.max()) + 1 if train.labels is not None else 0
            model = build_backbone(backbone, num_classes, in_channels=in_channels, weights=enum,
                                   embedding_dim=embedding_dim)
            channels = in_channels if backbone == "smallcnn" else 3
            mean, std = channel_stats(train.data, channels)
            if enum is not None:
                mean, std = tuple(enum.transforms().mean), tuple(enum.transforms().std)
            preprocess = Preprocess(channels=channels, size=image_size, mean=mean, std=std)
            accuracy = fit_classifier(model, preprocess, train, test, epochs, lr, batch_size, device, seed, progress)
        else:
            model = build_backbone(backbone, weights=enum)
            preprocess = _weights_preprocess(enum)
    if image_size is not None:
        preprocess.size, preprocess.crop = image_size, image_size
    extractor = feature_extractor(model)
    meta = {"backbone": backbone, "weights": weight_source or "trained here", "dataset": dataset,
            "preprocess": preprocess.to_dict(), "classifier_test_accuracy": accuracy,
            "flowood_version": __version__, "seed": seed, "in_distribution_shape": list(train.sample_shape)}
    arrays: dict[str, np.ndarray] = {}
    for split, ds in (("train", train), ("test", test)):
        arrays[f"embeddings_{split}"] = embed_images(extractor, preprocess, ds.data, batch_size * 2, device,
                                                     f"{dataset}:{split}", progress)
        if ds.labels is not None:
            arrays[f"labels_{split}"] = ds.labels.numpy()
    if classifier_path is not None:
        save_classifier(classifier_path, model, backbone, preprocess,
                        {"dataset": dataset, "test_accuracy": accuracy, "embedding_dim": embedding_dim,
                         "epochs": epochs, "seed": seed})
    _write_npz(out, arrays, meta)
    warnings = []
    zeros = float((arrays["embeddings_train"] == 0).mean())
    if zeros > 0.01:
        warnings.append(f"{100 * zeros:.0f}% of the feature values are exactly 0 (ReLU features pooled over a tiny "
                        "map): a flow can give such point masses unbounded density. Prefer --image-size 64 or more, "
                        "or the smallcnn backbone, whose features have no activation")
    for name, path in ood_files.items():
        ds = load_dataset(name, "test", data_root, shape=train.sample_shape)
        if not ds.is_image:
            raise ValueError(f"OOD set {name} holds vectors, not images")
        images = adapt_images(ds.data, train.sample_shape)
        vectors = embed_images(extractor, preprocess, images, batch_size * 2, device, f"{name}:test", progress)
        ood_arrays = {"embeddings_test": vectors}
        if ds.labels is not None:
            ood_arrays["labels_test"] = ds.labels.numpy()
        _write_npz(path, ood_arrays, {**meta, "dataset": name, "adapted_to": list(train.sample_shape)})
    dim = int(arrays["embeddings_train"].shape[1])
    return EmbedResult(out, ood_files, classifier_path, accuracy, dim, time.time() - start, warnings)
