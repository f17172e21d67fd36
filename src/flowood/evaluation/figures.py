"""Figures of an evaluation: score histograms, ROC curves, grids of example images."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowood.evaluation.metrics_file import Metrics
from flowood.outputs import atomic_write, save_figure

__all__ = ["pyplot", "score_histogram", "roc_curves", "image_grid", "evaluation_figures"]

_LABELS = {"likelihood": "bits/dim (negative log-likelihood)"}


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (imported when the first figure is drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def score_histogram(values: dict[str, np.ndarray], ind_name: str, aurocs: dict[str, float], score: str, title: str,
                    path: Path, xlabel: str | None = None, threshold: float | None = None) -> Path:
    """Overlaid density histograms of one score for every set (in-distribution first), with a detector's threshold
    as a vertical line when given."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lo = min(np.percentile(v, 0.5) for v in values.values())
    hi = max(np.percentile(v, 99.5) for v in values.values())
    if hi <= lo:
        hi = lo + 1e-6
    bins = np.linspace(lo, hi, 60)
    for name, v in values.items():
        label = f"{name} (test, in-dist)" if name == ind_name else f"{name} (OOD, AUROC {aurocs[name]:.2f})"
        ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.5, density=True, label=label)
    if threshold is not None:
        ax.axvline(float(np.clip(threshold, lo, hi)), color="black", ls="--", lw=1, label="threshold")
    ax.set_xlabel(xlabel or _LABELS.get(score, f"{score} score (higher = more anomalous)"))
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str, path: Path) -> Path:
    """ROC curves ``{score: (fpr, tpr, auroc)}`` of several scores for one OOD set (OOD positive)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for score, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{score} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate (in-distribution flagged)")
    ax.set_ylabel("true positive rate (OOD flagged)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def image_grid(images: np.ndarray, path: Path, scale: int = 3) -> Path:
    """Save uint8 images ``[N, C, H, W]`` side by side as one PNG, upscaled for viewing."""
    from PIL import Image

    if len(images) == 0:
        raise ValueError("no images for the grid")
    n, c, h, w = images.shape
    pad = 2
    canvas = np.full((h + 2 * pad, n * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        x0 = pad + i * (w + pad)
        canvas[pad:pad + h, x0:x0 + w] = img.transpose(1, 2, 0)
    im = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_write(path) as tmp:
        im.save(tmp)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "set"


def evaluation_figures(metrics: Metrics, values: dict[str, dict[str, np.ndarray]],
                       data: dict[str, torch.Tensor], num_dims: int, out: Path) -> dict[str, Any]:
    """Every figure of an evaluation, written into ``out``: ``{"histograms": {score: png}, "roc": {set: png},
    "examples": {set: (most likely png, least likely png)}}`` (the likelihood histogram in nats is
    ``loglik_hist.png``)."""
    from sklearn.metrics import roc_curve

    ind = metrics.in_distribution.name
    title = f"{metrics.provenance.flow} trained on {ind}"
    figs: dict[str, Any] = {"histograms": {}, "roc": {}, "examples": {}}
    for score, per_set in values.items():
        aurocs = {n: metrics.ood[n].scores[score].auroc for n in per_set if n != ind}
        figs["histograms"][score] = score_histogram(per_set, ind, aurocs, score, f"{score}: {title}",
                                                    out / f"hist_{score}.png")
    like = values["likelihood"]
    nats = {n: -v * num_dims * math.log(2) for n, v in like.items()}
    score_histogram(nats, ind, {n: metrics.ood[n].auroc for n in like if n != ind}, "likelihood", title,
                    out / "loglik_hist.png", xlabel="log-likelihood per image (nats)")
    for i, name in enumerate(metrics.ood, start=1):
        curves = {}
        for score, per_set in values.items():
            a, b = per_set[ind], per_set[name]
            fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
            curves[score] = (fpr, tpr, metrics.ood[name].scores[score].auroc)
        figs["roc"][name] = roc_curves(curves, f"{name} vs {ind}", out / f"roc_{i}_{_safe(name)}.png")
    if all(x.dim() == 4 for x in data.values()):
        for i, (name, x) in enumerate(data.items()):
            order = np.argsort(like[name])  # low bits/dim = most likely
            k = min(8, len(order))
            most = image_grid(x[order[:k]].numpy(), out / f"examples_{i}_{_safe(name)}_most.png")
            least = image_grid(x[order[::-1][:k].copy()].numpy(), out / f"examples_{i}_{_safe(name)}_least.png")
            figs["examples"][name] = (most, least)
    return figs
