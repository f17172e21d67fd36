"""Figures of an evaluation: score histograms, ROC curves, grids of example images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowood.outputs import atomic_write, save_figure

__all__ = ["score_histogram", "roc_curves", "image_grid"]

_LABELS = {"likelihood": "bits/dim (negative log-likelihood)"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def score_histogram(values: dict[str, np.ndarray], ind_name: str, aurocs: dict[str, float], score: str, title: str,
                    path: Path, xlabel: str | None = None) -> Path:
    """Overlaid density histograms of one score for every set (in-distribution first)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lo = min(np.percentile(v, 0.5) for v in values.values())
    hi = max(np.percentile(v, 99.5) for v in values.values())
    if hi <= lo:
        hi = lo + 1e-6
    bins = np.linspace(lo, hi, 60)
    for name, v in values.items():
        label = f"{name} (test, in-dist)" if name == ind_name else f"{name} (OOD, AUROC {aurocs[name]:.2f})"
        ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.5, density=True, label=label)
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
    plt = _pyplot()
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
