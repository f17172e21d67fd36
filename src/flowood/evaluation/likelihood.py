"""Likelihood-based OOD evaluation of a trained flow: bits/dim per sample, metrics, table, histogram.

The score is the negative log-likelihood in bits per dimension (higher = more anomalous), so an
AUROC below 0.5 means the flow gives the OOD set *higher* likelihood than its own test data:
the failure the paper explains.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flowood import __version__
from flowood.checkpoints import LoadedFlow, load_flow
from flowood.data import ArrayDataset, adapt_images, canonical_name, load_dataset
from flowood.flows import FlowModel
from flowood.ood.metrics import ood_metrics

__all__ = ["score_bits_per_dim", "evaluate", "EvaluationResult", "markdown_table", "resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def fit_to_model(dataset: ArrayDataset, flow: FlowModel) -> torch.Tensor:
    """The samples of ``dataset`` in the model's input shape (images converted gray/RGB and resized)."""
    if dataset.is_image and len(flow.input_shape) == 3:
        return adapt_images(dataset.data, flow.input_shape)
    if tuple(dataset.sample_shape) != flow.input_shape:
        raise ValueError(f"{dataset.name} has samples of shape {dataset.sample_shape} but the model takes "
                         f"{flow.input_shape}; vectors cannot be adapted, use data of the model's dimension")
    return dataset.data


@torch.inference_mode()
def score_bits_per_dim(flow: FlowModel, data: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu",
                       seed: int = 0, noise: str = "uniform", progress: bool = True, desc: str = "scoring") -> np.ndarray:
    """Bits/dim of every sample, in batches, with dequantization noise drawn from a seeded generator.

    The same flow, data and seed give identical numbers on every run.
    """
    flow.eval()
    device = torch.device(device)
    flow.to(device)
    if len(data) == 0:
        raise ValueError(f"{desc}: no samples to score")
    flow.check_input(data[: min(len(data), 4096)])
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(data), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = data[start:start + batch_size].to(device)
        bpd = flow.bits_per_dim(batch, noise=noise, generator=generator, validate=False)
        out.append(bpd.float().cpu())
    scores = torch.cat(out).numpy().astype(np.float64)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(f"{desc}: the model gave non-finite likelihoods for {bad} of {len(scores)} samples; "
                         "the checkpoint may be diverged (see flowood train's logs)")
    return scores


@dataclass
class EvaluationResult:
    """Metrics (as written to metrics.json) and the per-sample scores."""

    metrics: dict[str, Any]
    scores: dict[str, np.ndarray]
    out: Path | None


def markdown_table(metrics: dict[str, Any]) -> str:
    """The evaluation as a Markdown table, one row per data set."""
    ind = metrics["in_distribution"]
    rows = ["| data set | n | bits/dim (mean ± sd) | AUROC | AUPR | FPR@95%TPR |", "|---|---:|---:|---:|---:|---:|",
            f"| {ind['name']} (in-dist, test) | {ind['n']} | {ind['bpd_mean']:.3f} ± {ind['bpd_std']:.3f} | – | – | – |"]
    for name, m in metrics["ood"].items():
        rows.append(f"| {name} | {m['n']} | {m['bpd_mean']:.3f} ± {m['bpd_std']:.3f} | {m['auroc']:.3f} | "
                    f"{m['aupr']:.3f} | {m['fpr95']:.3f} |")
    return "\n".join(rows)


def _histogram(metrics: dict[str, Any], scores: dict[str, np.ndarray], num_dims: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    loglik = {name: -s * num_dims * math.log(2) for name, s in scores.items()}  # nats per image
    lo = min(np.percentile(v, 0.5) for v in loglik.values())
    hi = max(np.percentile(v, 99.5) for v in loglik.values())
    bins = np.linspace(lo, hi, 60)
    ind_name = metrics["in_distribution"]["name"]
    for name, v in loglik.items():
        label = f"{name} (test, in-dist)" if name == ind_name else f"{name} (OOD, AUROC {metrics['ood'][name]['auroc']:.2f})"
        ax.hist(np.clip(v, lo, hi), bins=bins, alpha=0.5, density=True, label=label)
    ax.set_xlabel("log-likelihood per image (nats)")
    ax.set_ylabel("density")
    ax.set_title(f"{metrics['provenance']['flow']} trained on {ind_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(checkpoint: str | Path | LoadedFlow, ood: list[str], out: str | Path | None = None,
             dataset: str | None = None, data_root: str | None = None, max_samples: int | None = None,
             batch_size: int = 512, device: str = "auto", seed: int = 0, bootstrap: int = 0,
             progress: bool = True) -> EvaluationResult:
    """Score the in-distribution test set and each OOD set by bits/dim, and compute OOD metrics.

    Args:
        checkpoint: a checkpoint path (or an already loaded flow).
        ood: OOD data set names; images are adapted to the model's shape.
        out: directory for ``metrics.json``, ``scores.npz`` and ``loglik_hist.png`` (None: write nothing).
        dataset: in-distribution set (default: the one the checkpoint was trained on).
        data_root: data root (default: the checkpoint's, else ``$FLOWOOD_DATA`` / ``~/.cache/flowood``).
        max_samples: score at most this many samples of each set (a seeded random subset).
        batch_size: samples per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        seed: seeds subsets and dequantization noise: the same seed gives identical numbers.
        bootstrap: resamples for 95% bootstrap intervals of every metric (0: none).
    """
    loaded = checkpoint if isinstance(checkpoint, LoadedFlow) else load_flow(checkpoint)
    flow = loaded.flow
    cfg = loaded.train_config
    ind_name = dataset or cfg.get("dataset")
    if not ind_name:
        raise ValueError("the checkpoint does not say which data set it was trained on; pass --dataset")
    root = data_root or cfg.get("data_root")
    if not ood:
        raise ValueError("no OOD data sets given; pass at least one, e.g. --ood mnist")
    names = [ind_name, *ood]
    canon = [canonical_name(n) for n in names]
    if len(set(canon)) != len(canon):
        raise ValueError(f"data set names repeat: {names}")
    dev = resolve_device(device)
    scores: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in canon:
        ds = load_dataset(name, "test", root, shape=flow.input_shape).take(max_samples, seed=seed)
        data = fit_to_model(ds, flow)
        scores[name] = score_bits_per_dim(flow, data, batch_size, dev, seed, progress=progress, desc=f"scoring {name}")
        info[name] = {"n": len(ds), "source": ds.source, "original_shape": list(ds.sample_shape)}
    ind = canon[0]
    s_in = scores[ind]
    metrics: dict[str, Any] = {
        "in_distribution": {"name": ind, "split": "test", **info[ind], "bpd_mean": float(s_in.mean()),
                            "bpd_std": float(s_in.std())},
        "ood": {},
        "score": "bits/dim (negative log-likelihood); higher means more OOD; OOD is the positive class",
    }
    for name in canon[1:]:
        s_out = scores[name]
        m = ood_metrics(s_in, s_out, bootstrap=bootstrap, seed=seed)
        metrics["ood"][name] = {**info[name], "bpd_mean": float(s_out.mean()), "bpd_std": float(s_out.std()),
                                "aupr": m["aupr_out"], **m,
                                "share_more_likely_than_median_in_dist": float(np.mean(s_out < np.median(s_in)))}
    metrics["provenance"] = {
        "checkpoint": str(loaded.path), "checkpoint_sha256": loaded.sha256, "flow": flow.config.get("flow"),
        "flow_config": flow.config, "trained_by_flowood": loaded.version, "flowood_version": __version__,
        "torch_version": torch.__version__, "numpy_version": np.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "device": str(dev), "seed": seed, "max_samples": max_samples,
        "dequantization": "uniform noise from a generator seeded with `seed`", "data_root": str(root) if root else None,
    }
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / "metrics.json").write_text(json.dumps(metrics, indent=2))
        keys = [f"set{i}" for i in range(len(canon))]
        np.savez(out_path / "scores.npz", names=np.array(canon), **dict(zip(keys, (scores[n] for n in canon))))
        _histogram(metrics, scores, flow.num_dims, out_path / "loglik_hist.png")
    return EvaluationResult(metrics, scores, out_path)
