"""Figures of ``flowood inspect``; each returns the PNG path (and writes a PDF beside it on request)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowood.inspect.analysis import pearson
from flowood.outputs import save_figure

__all__ = ["show_image", "latents_figure", "coupling_figure", "prediction_quality_figure", "contributions_figure",
           "pixel_maps_figure", "complexity_scatter", "samples_figure", "masks_figure"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, pdf: bool) -> Path:
    save_figure(fig, path, dpi=100, bbox_inches="tight")
    if pdf:
        save_figure(fig, path.with_suffix(".pdf"), bbox_inches="tight")
    _plt().close(fig)
    return path


def _as_picture(t: Tensor, normalise: bool) -> tuple[np.ndarray, bool]:
    """A [C, H, W] tensor as something imshow draws: RGB for 3 channels, else channel 0 (gray)."""
    a = t.detach().float().cpu()
    rgb = a.shape[0] == 3
    a = a.permute(1, 2, 0).numpy() if rgb else a[0].numpy()
    if normalise or rgb:
        lo, hi = np.percentile(a, 1), np.percentile(a, 99)
        a = np.clip((a - lo) / (hi - lo + 1e-8), 0, 1)
    return a, rgb


def show_image(ax, t: Tensor, title: str = "", normalise: bool = True, cmap: str = "gray") -> None:
    """Draw one tensor [C, H, W] on ``ax`` without ticks."""
    a, rgb = _as_picture(t, normalise)
    ax.imshow(a, cmap=None if rgb else cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _grid(rows: Sequence[tuple[str, Sequence[tuple[str, Tensor, bool]]]], path: Path, pdf: bool, title: str) -> Path:
    plt = _plt()
    n_rows, n_cols = len(rows), max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.35 * n_cols, 1.45 * n_rows), squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c < len(cells):
                name, tensor, normalise = cells[c]
                show_image(ax, tensor, name if r == 0 else "", normalise)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, pdf)


def latents_figure(rows: list[dict], path: Path, pdf: bool = False, noise_samples: int = 40) -> Path:
    """Per input: the input, z, z averaged over dequantization noises, and each scale's latents (channel 0)."""
    grid = []
    for row in rows:
        cells = [("input", row["input"], False), ("z", row["z"], True),
                 (f"z, mean of {noise_samples}", row["z_mean"], True)]
        cells += [(f"{name} (ch 0)", lat, True) for name, lat in row["scales"].items()]
        grid.append((row["label"], cells))
    return _grid(grid, path, pdf, "Latent representations (z keeps the input's edges and shapes)")


def coupling_figure(name: str, mask_label: str, rows: list[dict], path: Path, pdf: bool = False) -> Path:
    """One coupling layer on several inputs: its input, mask, scale s, prediction -t and output (channel 0)."""
    grid = []
    for row in rows:
        grid.append((row["label"], [("layer input", row["input"], True), ("transformed (mask)", row["mask"], False),
                                    ("s (log-scale)", row["s"], True), ("-t (prediction)", row["minus_t"], True),
                                    ("output", row["output"], True)]))
    return _grid(grid, path, pdf, f"{name} ({mask_label})")


def _per_layer_axes(fig, ax, ticks, labels: list[str], ylabel: str, title: str, path: Path, pdf: bool) -> Path:
    """Finish a chart with one tick per layer: rotated layer names, zero line, title, legend; save it."""
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=70, fontsize=6)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pdf)


def prediction_quality_figure(quality: dict[str, list[dict]], path: Path, pdf: bool = False) -> Path:
    """R^2 of -t for the transformed pixels, per coupling layer, one line per image set."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(next(iter(quality.values())))), 3.4))
    for label, layers in quality.items():
        ax.plot(range(len(layers)), [q["r2"] for q in layers], marker="o", ms=3, label=label)
    layers = next(iter(quality.values()))
    return _per_layer_axes(fig, ax, np.arange(len(layers)), [q["name"] for q in layers],
                           "R² of -t for the masked input",
                           "How well each coupling predicts the pixels it transforms", path, pdf)


def contributions_figure(contributions: dict[str, dict], path: Path, pdf: bool = False) -> Path:
    """Share of the total log-likelihood from each layer's log-det and each scale's prior, per image set."""
    plt = _plt()
    first = next(iter(contributions.values()))
    names = [layer["name"] for layer in first["layers"]] + [f"prior {s['name']}" for s in first["scales"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(names)), 3.4))
    width = 0.8 / len(contributions)
    for i, (label, c) in enumerate(contributions.items()):
        shares = [layer["share"] for layer in c["layers"]] + [s["share"] for s in c["scales"]]
        ax.bar(np.arange(len(names)) + i * width, shares, width, label=f"{label} ({c['total_nats']:.0f} nats)")
    return _per_layer_axes(fig, ax, np.arange(len(names)) + 0.4 - width / 2, names, "share of log-likelihood",
                           "Where the log-likelihood comes from (negative share = raises the likelihood)", path, pdf)


def pixel_maps_figure(rows: list[tuple[str, Tensor, Tensor]], path: Path, pdf: bool = False) -> Path:
    """Inputs beside their per-pixel log-likelihood maps (one shared colour scale)."""
    plt = _plt()
    maps = torch.stack([m for _, _, m in rows]).cpu().numpy()
    lo, hi = np.percentile(maps, 1), np.percentile(maps, 99)
    fig, axes = plt.subplots(2, len(rows), figsize=(1.3 * len(rows), 2.9), squeeze=False)
    for i, (label, image, m) in enumerate(rows):
        show_image(axes[0][i], image, label, normalise=False)
        im = axes[1][i].imshow(m.cpu().numpy(), cmap="viridis", vmin=lo, vmax=hi)
        axes[1][i].set_xticks([])
        axes[1][i].set_yticks([])
        axes[1][i].set_title(f"{float(m.sum()):.0f} nats", fontsize=7)
    fig.colorbar(im, ax=axes[1].tolist(), shrink=0.8, label="nats per pixel")
    fig.suptitle("Per-pixel log-likelihood (brighter = more likely)", fontsize=9)
    return _save(fig, path, pdf)


def complexity_scatter(points: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, pdf: bool = False) -> Path:
    """Bits/dim against PNG-compressed length per image, one colour per set, correlation in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for label, (complexity, bpd) in points.items():
        r = pearson(complexity, bpd)
        ax.scatter(complexity, bpd, s=6, alpha=0.5, label=f"{label} (r = {r:.2f})")
    ax.set_xlabel("PNG length (bits/dim): image complexity")
    ax.set_ylabel("negative log-likelihood (bits/dim)")
    ax.set_title("Likelihood follows image complexity", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, pdf)


def samples_figure(samples: dict[float, Tensor], path: Path, pdf: bool = False) -> Path:
    """Samples, one row per temperature."""
    rows = [(f"T = {t}", [("", s, False) for s in batch]) for t, batch in samples.items()]
    return _grid(rows, path, pdf, "Samples at several temperatures")


def masks_figure(masks: list[tuple[str, Tensor, Tensor]], path: Path, pdf: bool = False) -> Path:
    """Every coupling layer's mask: white = transformed, gray = conditioned on, black = untouched (channel 0)."""
    plt = _plt()
    n = len(masks)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.35 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        ax.axis("off")
        if i < n:
            name, condition, transform = masks[i]
            picture = (transform[0] + 0.5 * condition[0]).cpu().numpy()
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name, fontsize=5)
    fig.suptitle("Coupling masks (white: transformed, gray: seen by the st-network)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, pdf)
