"""OOD evaluation of a trained flow: every requested score on the same data, metrics, figures, report.

Each score is oriented so that higher means more anomalous (for the likelihood: bits/dim), so an
AUROC below 0.5 means the score prefers the OOD set to the flow's own test data: for the
likelihood, the failure the paper explains.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flowood import __version__
from flowood.checkpoints import LoadedFlow, load_flow
from flowood.data import ArrayDataset, adapt_images, canonical_name, dataset_inputs, load_dataset
from flowood.errors import DataError, FlowoodError
from flowood.outputs import OutputFolder, atomic_write, open_output_folder, write_text_atomic
from flowood.flows import ConfigError, FlowModel
from flowood.ood.metrics import ood_metrics
from flowood.ood.scores import DEFAULT_SCORES, SCORE_NAMES, make_score, score_bits_per_dim

__all__ = ["evaluate", "EvaluationResult", "markdown_table", "scores_table", "resolve_device", "fit_to_model",
           "score_bits_per_dim"]


class DeviceError(FlowoodError, ValueError):
    """A device that this machine does not have."""


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available; use `device='cpu'`")
    return torch.device(device)


def fit_to_model(dataset: ArrayDataset, flow: FlowModel) -> torch.Tensor:
    """The samples of ``dataset`` in the model's input shape (images converted gray/RGB and resized)."""
    if len(dataset) == 0:
        raise DataError(f"{dataset.name}:{dataset.split} is empty: there is nothing to score; check its files")
    dataset.check_values()
    if dataset.is_image and len(flow.input_shape) == 3:
        return adapt_images(dataset.data, flow.input_shape)
    if tuple(dataset.sample_shape) != flow.input_shape:
        raise DataError(f"{dataset.name} has samples of shape {dataset.sample_shape} but the model takes "
                         f"{flow.input_shape}; vectors cannot be adapted, use data of the model's dimension")
    return dataset.data


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        metrics: the contents of metrics.json.
        scores: bits/dim per sample of every set (the likelihood score), ``{set: array}``.
        score_values: every score, ``{score: {set: array}}``.
        out: the output directory, if one was written.
    """

    metrics: dict[str, Any]
    scores: dict[str, np.ndarray]
    score_values: dict[str, dict[str, np.ndarray]]
    out: Path | None


def markdown_table(metrics: dict[str, Any]) -> str:
    """The likelihood evaluation as a Markdown table, one row per data set."""
    ind = metrics["in_distribution"]
    rows = ["| data set | n | bits/dim (mean ± sd) | AUROC | AUPR | FPR@95%TPR |", "|---|---:|---:|---:|---:|---:|",
            f"| {ind['name']} (in-dist, test) | {ind['n']} | {ind['bpd_mean']:.3f} ± {ind['bpd_std']:.3f} | – | – | – |"]
    for name, m in metrics["ood"].items():
        rows.append(f"| {name} | {m['n']} | {m['bpd_mean']:.3f} ± {m['bpd_std']:.3f} | {m['auroc']:.3f} | "
                    f"{m['aupr']:.3f} | {m['fpr95']:.3f} |")
    return "\n".join(rows)


def scores_table(metrics: dict[str, Any]) -> str:
    """AUROC of every score against every OOD set, as a Markdown table."""
    names = metrics["scores_computed"]
    rows = ["| OOD set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, entry in metrics["ood"].items():
        cells = [f"{entry['scores'][s]['auroc']:.3f}" if s in entry["scores"] else "–" for s in names]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "set"


def _figures(metrics: dict[str, Any], values: dict[str, dict[str, np.ndarray]], data: dict[str, torch.Tensor],
             flow: FlowModel, out: Path) -> dict[str, Any]:
    from sklearn.metrics import roc_curve

    from flowood.evaluation.figures import image_grid, roc_curves, score_histogram

    ind = metrics["in_distribution"]["name"]
    title = f"{metrics['provenance']['flow']} trained on {ind}"
    figs: dict[str, Any] = {"histograms": {}, "roc": {}, "examples": {}}
    for score, per_set in values.items():
        aurocs = {n: metrics["ood"][n]["scores"][score]["auroc"] for n in per_set if n != ind}
        figs["histograms"][score] = score_histogram(per_set, ind, aurocs, score, f"{score}: {title}",
                                                    out / f"hist_{score}.png")
    like = values["likelihood"]
    nats = {n: -v * flow.num_dims * math.log(2) for n, v in like.items()}
    score_histogram(nats, ind, {n: metrics["ood"][n]["auroc"] for n in like if n != ind}, "likelihood", title,
                    out / "loglik_hist.png", xlabel="log-likelihood per image (nats)")
    for i, name in enumerate(metrics["ood"], start=1):
        curves = {}
        for score, per_set in values.items():
            a, b = per_set[ind], per_set[name]
            fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])
            curves[score] = (fpr, tpr, metrics["ood"][name]["scores"][score]["auroc"])
        figs["roc"][name] = roc_curves(curves, f"{name} vs {ind}", out / f"roc_{i}_{_safe(name)}.png")
    if len(flow.input_shape) == 3:
        for i, (name, x) in enumerate(data.items()):
            order = np.argsort(like[name])  # low bits/dim = most likely
            k = min(8, len(order))
            most = image_grid(x[order[:k]].numpy(), out / f"examples_{i}_{_safe(name)}_most.png")
            least = image_grid(x[order[::-1][:k].copy()].numpy(), out / f"examples_{i}_{_safe(name)}_least.png")
            figs["examples"][name] = (most, least)
    return figs


def evaluate(checkpoint: str | Path | LoadedFlow, ood: list[str], out: str | Path | None = None,
             dataset: str | None = None, data_root: str | None = None, max_samples: int | None = None,
             batch_size: int = 512, device: str = "auto", seed: int = 0, bootstrap: int = 0,
             scores: list[str] | None = None, ensemble: list[str | Path] | None = None,
             background: str | Path | None = None, background_steps: int = 1000, typicality_batch: int = 1,
             fit_samples: int = 10000, compile: bool = False, precision: str = "fp32",
             progress: bool = True, overwrite: bool = False) -> EvaluationResult:
    """Score the in-distribution test set and each OOD set with every requested score; compute metrics.

    Args:
        checkpoint: a checkpoint path (or an already loaded flow).
        ood: OOD data set names; images are adapted to the model's shape.
        out: directory for metrics.json, scores.npz, figures and report.html (None: write nothing).
        dataset: in-distribution set (default: the one the checkpoint was trained on).
        data_root: data root (default: the checkpoint's, else ``$FLOWOOD_DATA`` / ``~/.cache/flowood``).
        max_samples: score at most this many samples of each set (a seeded random subset).
        batch_size: samples per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        seed: seeds subsets and dequantization noise: the same seed gives identical numbers.
        bootstrap: resamples for 95% bootstrap intervals of every metric (0: none).
        scores: score names (default: every score that needs no extra model, see ``DEFAULT_SCORES``;
            ``likelihood`` is always computed). ``likelihood_ratio`` trains a background flow unless
            ``background`` is given; ``waic`` needs ``ensemble``.
        ensemble: further checkpoints trained on the same data, for ``waic``.
        background: checkpoint of a background flow for ``likelihood_ratio`` (e.g. a general-domain one).
        background_steps: training steps of the perturbation background flow.
        typicality_batch: group size of the typicality test (1: the single-sample form).
        fit_samples: in-distribution training samples used by scores that fit (typicality, background).
        compile: score through ``torch.compile`` (same numbers; pays off for large sets, see FlowModel.optimize).
        precision: ``fp32``, or ``bf16``/``fp16`` to run the st-networks of every flow at that precision (the
            log-determinants stay fp32; for GPUs, see FlowModel.mixed_precision). Recorded in metrics.json.
        progress: show progress bars.
        overwrite: replace an earlier evaluation in ``out`` (only the files it wrote are removed).

    Raises:
        OutputError: ``out`` is unsafe (see :func:`flowood.outputs.open_output_folder`), not writable, or holds
            an earlier evaluation without ``overwrite``; checked before any data are loaded.
    """
    from flowood.flows.precision import parse_precision
    st_dtype = parse_precision(precision)  # unknown names fail here, before anything is loaded
    loaded = checkpoint if isinstance(checkpoint, LoadedFlow) else load_flow(checkpoint)
    flow = loaded.flow
    cfg = loaded.train_config
    ind_name = dataset or cfg.get("dataset")
    if not ind_name:
        raise DataError("the checkpoint does not say which data set it was trained on; pass `dataset`")
    root = data_root or cfg.get("data_root")
    if not ood:
        raise DataError("no OOD data sets given; pass at least one, e.g. `ood=['mnist']`")
    names = [ind_name, *ood]
    canon = [canonical_name(n) for n in names]
    if len(set(canon)) != len(canon):
        raise DataError(f"data set names repeat: {names}")
    inputs = [loaded.path, *(ensemble or []), background, *dataset_inputs(canon, root)]
    folder = open_output_folder(out, "evaluate", inputs, overwrite=overwrite) if out is not None else None
    try:
        return _evaluate(loaded, canon, folder, root, max_samples, batch_size, device, seed, bootstrap, scores,
                         ensemble, background, background_steps, typicality_batch, fit_samples, compile, precision,
                         st_dtype, progress)
    finally:
        if folder is not None:
            folder.close()


def _evaluate(loaded: LoadedFlow, canon: list[str], folder: OutputFolder | None, root: str | None,
              max_samples: int | None, batch_size: int, device: str, seed: int, bootstrap: int,
              scores: list[str] | None, ensemble: list[str | Path] | None, background: str | Path | None,
              background_steps: int, typicality_batch: int, fit_samples: int, compile: bool, precision: str,
              st_dtype: Any, progress: bool) -> EvaluationResult:
    flow = loaded.flow
    requested = list(scores) if scores else [s for s in DEFAULT_SCORES if _applicable(s, flow)]
    if "waic" in requested and not ensemble:
        raise ConfigError("the waic score needs an ensemble: pass `ensemble=[checkpoint, ...]`")
    if ensemble and "waic" not in requested:
        requested.append("waic")
    for s in requested:
        if s not in SCORE_NAMES:
            make_score(s, flow)  # raises with the closest valid name
    requested = ["likelihood"] + [s for s in dict.fromkeys(requested) if s != "likelihood"]
    dev = resolve_device(device)
    flow.to(dev).optimize(compile=compile).mixed_precision(st_dtype)  # channels-last: the numbers do not change
    ensemble_flows = [load_flow(p).flow.to(dev).optimize().mixed_precision(st_dtype) for p in (ensemble or [])]
    background_flow = (load_flow(background).flow.to(dev).optimize().mixed_precision(st_dtype)
                       if background else None)

    data: dict[str, torch.Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in canon:
        ds = load_dataset(name, "test", root, shape=flow.input_shape).take(max_samples, seed=seed)
        data[name] = fit_to_model(ds, flow)
        info[name] = {"n": len(ds), "source": ds.source, "original_shape": list(ds.sample_shape)}

    values: dict[str, dict[str, np.ndarray]] = {}
    cache: dict = {}  # likelihoods shared by the scores that need them
    train_data = None
    for score_name in tqdm(requested, desc="scores", unit="score", disable=not progress):
        scorer = make_score(score_name, flow, ensemble=ensemble_flows, background=background_flow,
                            typicality_batch=typicality_batch, background_steps=background_steps,
                            batch_size=batch_size, seed=seed, progress=progress, cache=cache)
        if scorer.needs_fit and not scorer.fitted:
            if train_data is None:
                train_set = load_dataset(canon[0], "train", root, shape=flow.input_shape).take(fit_samples, seed=seed)
                train_data = fit_to_model(train_set, flow)
            scorer.fit(train_data)
        values[scorer.name] = {name: scorer.score(x) for name, x in data.items()}

    ind = canon[0]
    like = values["likelihood"]
    metrics: dict[str, Any] = {
        "in_distribution": {"name": ind, "split": "test", **info[ind], "bpd_mean": float(like[ind].mean()),
                            "bpd_std": float(like[ind].std()),
                            "scores": {s: {"mean": float(v[ind].mean())} for s, v in values.items()}},
        "ood": {},
        "score": "bits/dim (negative log-likelihood); higher means more OOD; OOD is the positive class",
        "scores_computed": list(values),
    }
    for name in canon[1:]:
        per_score = {s: ood_metrics(v[ind], v[name], bootstrap=bootstrap, seed=seed) for s, v in values.items()}
        for s, v in values.items():
            per_score[s]["mean"] = float(v[name].mean())
        m = per_score["likelihood"]
        metrics["ood"][name] = {
            **info[name], "bpd_mean": float(like[name].mean()), "bpd_std": float(like[name].std()),
            "aupr": m["aupr_out"], **{k: v for k, v in m.items() if k != "mean"},
            "share_more_likely_than_median_in_dist": float(np.mean(like[name] < np.median(like[ind]))),
            "scores": per_score}
    metrics["provenance"] = {
        "checkpoint": str(loaded.path), "checkpoint_sha256": loaded.sha256, "flow": flow.config.get("flow"),
        "flow_config": flow.config, "trained_by_flowood": loaded.version, "flowood_version": __version__,
        "torch_version": torch.__version__, "numpy_version": np.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "device": str(dev), "precision": precision, "seed": seed,
        "max_samples": max_samples,
        "dequantization": "uniform noise from a generator seeded with `seed`", "data_root": str(root) if root else None,
        "typicality_batch": typicality_batch, "fit_samples": fit_samples if train_data is not None else 0,
        "ensemble": [str(p) for p in ensemble or []], "background": str(background) if background else None,
        "background_steps": background_steps if "likelihood_ratio" in values and not background else None,
    }
    out_path = folder.path if folder is not None else None
    if out_path is not None:
        from flowood.evaluation.report import write_report

        write_text_atomic(out_path / "metrics.json", json.dumps(metrics, indent=2))
        arrays = {f"set{i}": like[n] for i, n in enumerate(canon)}
        for s, per_set in values.items():
            arrays.update({f"{s}__set{i}": per_set[n] for i, n in enumerate(canon)})
        with atomic_write(out_path / "scores.npz") as tmp:
            np.savez(tmp, names=np.array(canon), scores=np.array(list(values)), **arrays)
        figures = _figures(metrics, values, data, flow, out_path)
        write_report(metrics, figures, out_path / "report.html")
    return EvaluationResult(metrics, like, values, out_path)


def _applicable(score: str, flow: FlowModel) -> bool:
    """Default scores that make sense for this flow (no complexity for vectors, no early scales for one scale)."""
    if score.startswith("complexity"):
        return flow.discrete and len(flow.input_shape) == 3
    if score == "latent_early_scales":
        return flow.num_scales > 1
    return True
