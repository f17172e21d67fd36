"""``flowood inspect``: every analysis of the paper's Sections 5 and 6 for one model and chosen images."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowood.checkpoints import LoadedFlow, load_flow
from flowood.data import dataset_inputs, fit_to_shape, load_dataset
from flowood.errors import DataError
from flowood.flows import FlowModel
from flowood.htmlpage import figure, page
from flowood.inspect import figures as F
from flowood.inspect.analysis import (
    averaged_latents,
    coupling_prediction_quality,
    likelihood_contributions,
    pearson,
    pixel_log_likelihood,
)
from flowood.ood.scores import compressed_bits_per_dim, score_bits_per_dim
from flowood.options import merge_options, option
from flowood.outputs import open_output_folder, write_text_atomic
from flowood.runtime import data_root_option, seed_option
from flowood.tables import Table

__all__ = ["inspect_flow", "InspectOptions", "parse_image_spec", "ImageSelection", "InspectionResult",
           "load_selections"]

_RANGE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass
class ImageSelection:
    """Images chosen by a spec such as ``fashionmnist:test:0-7``."""

    name: str
    split: str
    indices: list[int]

    @property
    def label(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def parse_image_spec(spec: str) -> ImageSelection:
    """``NAME[:SPLIT[:INDICES]]`` with INDICES like ``0-7`` or ``0,3,10-12`` (default ``test:0-7``)."""
    name, split, indices = spec, "test", "0-7"
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and parts[1] in ("train", "test") and _RANGE.match(parts[2]):
        name, split, indices = parts
    elif len(parts) >= 2 and spec.rsplit(":", 1)[1] in ("train", "test"):
        name, split = spec.rsplit(":", 1)
    elif len(parts) >= 2 and _RANGE.match(spec.rsplit(":", 1)[1]) and ":" in spec.rsplit(":", 1)[0]:
        raise DataError(f"image spec {spec!r}: the split must be 'train' or 'test' (NAME:SPLIT:INDICES)")
    out: list[int] = []
    for part in indices.split(","):
        lo, _, hi = part.partition("-")
        start, stop = int(lo), int(hi or lo)
        if stop < start:
            raise DataError(f"image spec {spec!r}: range {part} runs backwards")
        out.extend(range(start, stop + 1))
    return ImageSelection(name, split, out)


@dataclass
class InspectionResult:
    """Paths of everything written, and the numbers (also in ``inspect.json``)."""

    out: Path
    html: Path
    figures: dict[str, Any]
    numbers: dict[str, Any]


@dataclass
class InspectOptions:
    """What :func:`inspect_flow` computes: every field is an option (``flowood inspect --help`` shows them)."""

    noise_samples: int = option(40, "dequantization noises averaged for the mean latents (the paper: 40)", minimum=1)
    temperatures: list[float] = option(default_factory=lambda: [0.5, 0.75, 1.0], help="sampling temperatures",
                                       metavar="T")
    pdf: bool = option(False, "also write every figure as PDF")
    complexity_samples: int = option(500, "images per set for the likelihood-vs-complexity scatter", minimum=1)
    data_root: str | None = data_root_option()
    seed: int = seed_option()


def inspect_flow(checkpoint: str | Path | LoadedFlow, images: list[str], out: str | Path,
                 options: InspectOptions | None = None, *, progress: bool = True, overwrite: bool = False,
                 **option_values: Any) -> InspectionResult:
    """Write the figures, ``inspect.json`` and ``inspect.html`` for a checkpoint and image selections.

    Args:
        checkpoint: a checkpoint path or a loaded flow.
        images: specs ``NAME[:SPLIT[:INDICES]]``; the first is usually in-distribution, the rest OOD.
        out: output folder; checked, created and locked before any data are loaded.
        options: an :class:`InspectOptions` (its fields are listed there).
        progress: show a progress bar.
        overwrite: replace an earlier inspection in ``out`` (only the files it wrote are removed).
        **option_values: any field of :class:`InspectOptions`, e.g. ``noise_samples=8``.

    Raises:
        OutputError: ``out`` is unsafe, not writable, or holds an earlier inspection without ``overwrite``
            (see :func:`flowood.outputs.open_output_folder`).
        DataError: a vector model, no images, or indices out of range.
    """
    options = merge_options(InspectOptions, options, option_values)
    loaded = checkpoint if isinstance(checkpoint, LoadedFlow) else load_flow(checkpoint)
    flow = loaded.flow.cpu().eval()
    if not flow.discrete or len(flow.input_shape) != 3:
        raise DataError("flowood inspect works on image flows (RealNVP, Glow); this checkpoint models vectors")
    if not images:
        raise DataError("pass at least one image selection, e.g. `images=['fashionmnist:test:0-7']`")
    root = options.data_root or loaded.train_config.get("data_root")
    selections = [parse_image_spec(s) for s in images]
    inputs = [loaded.path, *dataset_inputs([sel.name for sel in selections], root)]
    with open_output_folder(out, "inspect", inputs, overwrite=overwrite) as folder:
        sets, full = load_selections(flow, selections, root, options)
        steps = tqdm(total=5, desc="inspect", disable=not progress)
        torch.manual_seed(options.seed)
        figs: dict[str, Any] = {}
        numbers: dict[str, Any] = {"checkpoint": str(loaded.path), "checkpoint_sha256": loaded.sha256,
                                   "flow_config": flow.config, "images": {k: len(v) for k, v in sets.items()}}
        for step in (_latents, _couplings, _prediction_numbers, _likelihood_maps, _samples_and_masks):
            step(flow, sets, full, folder.path, options, figs, numbers)
            steps.update()
        steps.close()
        write_text_atomic(folder.path / "inspect.json", json.dumps(_finite_or_null(numbers), indent=2))
        page_path = _write_page(numbers, figs, folder.path / "inspect.html")
    return InspectionResult(folder.path, page_path, figs, numbers)


def load_selections(flow: FlowModel, selections: list[ImageSelection], root: str | None, options: InspectOptions
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(chosen images per set, a seeded random sample of each set for the complexity scatter)``."""
    sets: dict[str, torch.Tensor] = {}
    full: dict[str, torch.Tensor] = {}
    for sel in selections:
        ds = load_dataset(sel.name, sel.split, root, shape=flow.input_shape)
        if max(sel.indices) >= len(ds):
            raise DataError(f"{sel.name}:{sel.split} has {len(ds)} images; index {max(sel.indices)} is out of range")
        data = fit_to_shape(ds, flow.input_shape)
        label = sel.label if sel.label not in sets else f"{sel.label}:{sel.split}"
        sets[label] = data[sel.indices]
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(options.seed))
        full[label] = data[order[:options.complexity_samples]]
    return sets, full


def _latents(flow: FlowModel, sets: dict[str, Tensor], full: dict[str, Tensor], out: Path, o: InspectOptions,
             figs: dict[str, Any], numbers: dict[str, Any]) -> None:
    """Latents, per scale, and averaged over dequantization noise (the paper's Section 5)."""
    rows = []
    for label, x in sets.items():
        sel = x[:4]
        tr = flow.trace(sel)
        z_mean = averaged_latents(flow, sel, o.noise_samples, o.seed)
        for i in range(len(sel)):
            rows.append({"label": f"{label} #{i}", "input": sel[i].float() / 255, "z": tr.z[i], "z_mean": z_mean[i],
                         "scales": {n: lat[i] for n, lat in tr.latents.items()}})
    figs["latents"] = F.latents_figure(rows, out / "latents.png", o.pdf, o.noise_samples)


def _couplings(flow: FlowModel, sets: dict[str, Tensor], full: dict[str, Tensor], out: Path, o: InspectOptions,
               figs: dict[str, Any], numbers: dict[str, Any]) -> None:
    """Coupling layers at work: two inputs of every set side by side (the paper's Section 6)."""
    pair = torch.cat([x[:2] for x in sets.values()])
    pair_labels = [f"{label} #{i}" for label, x in sets.items() for i in range(min(2, len(x)))]
    tr = flow.trace(pair)
    figs["couplings"] = {}
    for k, record in enumerate(r for r in tr.records if r.kind == "coupling"):
        layer = flow.steps[flow.step_names.index(record.name)]
        cells = [{"label": pair_labels[i], "input": record.extras["input"][i], "mask": record.extras["transform"],
                  "s": record.extras["s"][i], "minus_t": -record.extras["t"][i], "output": record.output[i]}
                 for i in range(len(pair))]
        figs["couplings"][record.name] = F.coupling_figure(record.name, f"mask {layer.mask_kind} {layer.mask_index}",
                                                           cells, out / f"coupling_{k:02d}.png", o.pdf)


def _prediction_numbers(flow: FlowModel, sets: dict[str, Tensor], full: dict[str, Tensor], out: Path,
                        o: InspectOptions, figs: dict[str, Any], numbers: dict[str, Any]) -> None:
    """How well each coupling predicts what it transforms, and where the likelihood comes from."""
    quality = {label: coupling_prediction_quality(flow, x) for label, x in sets.items()}
    contributions = {label: likelihood_contributions(flow, x) for label, x in sets.items()}
    numbers["coupling_prediction"] = quality
    numbers["likelihood_contributions"] = contributions
    figs["prediction"] = F.prediction_quality_figure(quality, out / "coupling_prediction_r2.png", o.pdf)
    figs["contributions"] = F.contributions_figure(contributions, out / "likelihood_contributions.png", o.pdf)


def _likelihood_maps(flow: FlowModel, sets: dict[str, Tensor], full: dict[str, Tensor], out: Path,
                     o: InspectOptions, figs: dict[str, Any], numbers: dict[str, Any]) -> None:
    """Per-pixel log-likelihood maps, and likelihood against PNG complexity."""
    map_rows = []
    for label, x in sets.items():
        sel = x[:4]
        maps = pixel_log_likelihood(flow, sel)
        map_rows += [(f"{label} #{i}", sel[i].float() / 255, maps[i]) for i in range(len(sel))]
    figs["pixel_maps"] = F.pixel_maps_figure(map_rows, out / "pixel_loglik.png", o.pdf)
    points, correlation = {}, {}
    for label, x in full.items():
        bpd = score_bits_per_dim(flow, x, seed=o.seed)
        complexity = compressed_bits_per_dim(x)
        points[label] = (complexity, bpd)
        correlation[label] = pearson(complexity, bpd)
    numbers["likelihood_vs_complexity_correlation"] = correlation
    figs["complexity"] = F.complexity_scatter(points, out / "loglik_vs_complexity.png", o.pdf)


def _samples_and_masks(flow: FlowModel, sets: dict[str, Tensor], full: dict[str, Tensor], out: Path,
                       o: InspectOptions, figs: dict[str, Any], numbers: dict[str, Any]) -> None:
    g = torch.Generator().manual_seed(o.seed)
    samples = {t: flow.sample(8, temperature=t, generator=g) for t in o.temperatures}
    figs["samples"] = F.samples_figure(samples, out / "samples.png", o.pdf)
    masks = [(name, layer.condition[0], layer.transform[0]) for name, layer in flow.coupling_layers()]
    figs["masks"] = F.masks_figure(masks, out / "masks.png", o.pdf)


def _finite_or_null(value: Any) -> Any:
    """NaN (a correlation of a constant set, say) as JSON null, so inspect.json stays valid JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def _prediction_table(numbers: dict[str, Any]) -> Table:
    """R² and correlation of every coupling layer's -t with the pixels it transforms, for every image."""
    prediction = numbers["coupling_prediction"]
    labels = list(prediction)
    rows = [[first["name"], first["mask"],
             *(f"{prediction[label][i][k]:.3f}" for label in labels for k in ("r2", "corr"))]
            for i, first in enumerate(prediction[labels[0]])]
    return Table(["layer", "mask", *(f"{k} {label}" for label in labels for k in ("R²", "corr"))], rows,
                 align="ll" + "r" * 2 * len(labels))


def _contributions_table(numbers: dict[str, Any]) -> Table:
    """Every image's log-likelihood in nats, split by the prior of each scale, and its correlation with PNG length."""
    contributions, correlation = numbers["likelihood_contributions"], numbers["likelihood_vs_complexity_correlation"]
    labels = list(contributions)
    rows = [[label, f"{c['total_nats']:.1f}", *(f"{s['prior_nats']:.1f}" for s in c["scales"]),
             f"{correlation.get(label, float('nan')):.3f}"] for label, c in contributions.items()]
    return Table(["set", "total (nats/image)", *(f"prior {s['name']}" for s in contributions[labels[0]]["scales"]),
                  "corr. with PNG complexity"], rows)


def _write_page(numbers: dict[str, Any], figs: dict[str, Any], path: Path) -> Path:
    e = html.escape
    cfg = numbers["flow_config"]
    body = [f"<h1>Inside a {e(str(cfg.get('flow')))} (mask {e(str(cfg.get('mask')))}, st-network "
            f"{e(str(cfg.get('st_type')))})</h1>",
            f"<p class='note'>checkpoint {e(numbers['checkpoint'])} (sha256 {e(numbers['checkpoint_sha256'][:12])}…); "
            f"images: {e(', '.join(f'{k} ({v})' for k, v in numbers['images'].items()))}. Kirichenko et al. (2020) "
            "show that the likelihood is high whenever coupling layers predict the masked pixels well, for in- and "
            "out-of-distribution images alike; these pages show it for this model.</p>",
            "<h2>1. Latent representations</h2>",
            figure(figs["latents"], "inputs, z, z averaged over noise, per-scale latents", wide=True),
            "<h2>2. How well each coupling predicts the pixels it transforms</h2>", _prediction_table(numbers).html()]
    body += [figure(figs["prediction"], "R² of -t per coupling layer"),
             figure(figs["contributions"], "shares of the log-likelihood")]
    body += ["<h2>3. Where the log-likelihood comes from</h2>", _contributions_table(numbers).html()]
    body += [figure(figs["pixel_maps"], "per-pixel log-likelihood", wide=True),
             figure(figs["complexity"], "bits/dim against PNG length")]
    body.append("<h2>4. Coupling layers at work</h2><p class='note'>For each coupling: its input, the part it "
                "transforms, the log-scale s and the prediction -t of its st-network, and its output (channel 0).</p>")
    body += [figure(p, name) for name, p in figs["couplings"].items()]
    body += ["<h2>5. Samples and masks</h2>", figure(figs["samples"], "samples"), figure(figs["masks"], "masks")]
    write_text_atomic(path, page("flowood inspect", body))
    return path
