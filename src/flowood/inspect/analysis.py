"""The numbers behind the paper's pictures (Kirichenko et al. 2020, Sections 5 and 6).

* :func:`coupling_prediction_quality`: how well each coupling's ``-t`` predicts the pixels it
  transforms (R^2 and correlation over the transformed part). The paper's mechanism: likelihood is
  high whenever couplings predict masked pixels well, in- or out-of-distribution.
* :func:`likelihood_contributions`: each layer's log-determinant and each scale's prior term, as
  nats per image and as shares of the total log-likelihood.
* :func:`pixel_log_likelihood`: a per-pixel map of each input's log-likelihood (it sums to ``log_prob``).
* :func:`averaged_latents`: ``z`` averaged over many dequantization noises (the paper uses 40).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from flowood.errors import DataError
from flowood.flows import FlowModel
from flowood.flows.layers import ActNorm, InvertibleConv1x1, Squeeze, squeeze2d
from flowood.flows.model import Split
from flowood.flows.preprocessing import DEQUANTIZATION_LOG_DET, dequantize

__all__ = ["r2_score", "pearson", "coupling_prediction_quality", "likelihood_contributions", "pixel_log_likelihood",
           "averaged_latents"]


def r2_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of ``prediction`` for ``target`` (1 = perfect)."""
    prediction, target = np.asarray(prediction, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    ss_tot = np.sum((target - target.mean()) ** 2)
    if ss_tot == 0:
        return float("nan")
    return float(1.0 - np.sum((target - prediction) ** 2) / ss_tot)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation (NaN when either side is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def coupling_prediction_quality(flow: FlowModel, x: Tensor, noise: str = "center") -> list[dict]:
    """For every coupling layer: R^2 and correlation between ``-t`` and the transformed part of its input.

    Returns:
        One dict per coupling: ``name``, ``mask``, ``r2``, ``corr`` (pooled over the batch) and
        ``mean_s`` (mean log-scale over the transformed part: how confident the layer is).
    """
    flow.eval()
    out = []
    for record in flow.trace(x, noise=noise).records:
        if record.kind != "coupling":
            continue
        where = record.extras["transform"].bool().expand_as(record.extras["input"][0])
        target = record.extras["input"][:, where].cpu().numpy()
        prediction = -record.extras["t"][:, where].cpu().numpy()
        s = record.extras["s"][:, where]
        layer = flow.steps[flow.step_names.index(record.name)]
        out.append({"name": record.name, "mask": f"{layer.mask_kind} {layer.mask_index}",
                    "r2": r2_score(prediction, target), "corr": pearson(prediction, target),
                    "mean_s": float(s.mean())})
    return out


@torch.no_grad()
def likelihood_contributions(flow: FlowModel, x: Tensor, noise: str = "center") -> dict[str, list[dict]]:
    """Where the log-likelihood comes from, in nats per image (batch means) and shares of the total.

    Returns:
        ``{"layers": [{"name", "kind", "nats", "share"}], "scales": [{"name", "prior_nats", "share"}],
        "total_nats": float}``; the layers' log-dets, the scales' prior terms and the
        dequantization constant (listed as a layer) add up to the total.
    """
    flow.eval()
    tr = flow.trace(x, noise=noise)
    total = float(tr.log_prob.mean())
    layers = [{"name": r.name, "kind": r.kind, "nats": float(r.log_det.mean())}
              for r in tr.records if r.kind != "split"]
    if flow.discrete:
        layers.append({"name": "dequantization", "kind": "constant", "nats": flow.num_dims * DEQUANTIZATION_LOG_DET})
    scales = [{"name": name, "prior_nats": float(flow.prior.log_prob(z).mean())} for name, z in tr.latents.items()]
    for entry in layers:
        entry["share"] = entry["nats"] / total if total else float("nan")
    for entry in scales:
        entry["share"] = entry["prior_nats"] / total if total else float("nan")
    return {"layers": layers, "scales": scales, "total_nats": total}


def _logit_elementwise(alpha: float, x: Tensor) -> Tensor:
    s = alpha + (1.0 - 2.0 * alpha) * x
    return math.log(1.0 - 2.0 * alpha) - torch.log(s) - torch.log1p(-s)


@torch.no_grad()
def pixel_log_likelihood(flow: FlowModel, x: Tensor, noise: str = "center") -> Tensor:
    """Each input's log-likelihood (nats) spread over its pixels: ``[B, H, W]``, summing to ``log_prob``.

    Every dimension's prior term and every layer's elementwise log-determinant are carried through
    the same squeezes and splits as the latents and put back at the pixel they came from (channels
    summed). The invertible 1x1 convolution mixes channels, so its log-determinant is shared evenly
    by the channels of each position.
    """
    if not flow.discrete or len(flow.input_shape) != 3:
        raise DataError("per-pixel maps need an image flow")
    flow.eval()
    flow.check_input(x)
    h = dequantize(x, noise=noise)
    ld = torch.full_like(h, DEQUANTIZATION_LOG_DET)
    ld = ld + _logit_elementwise(flow.logit.alpha, h)
    h, _ = flow.logit(h)
    factored, factored_ld = [], []
    for step in flow.steps:
        if isinstance(step, Split):
            (part, h), (part_ld, ld) = Split.factor_out(h), Split.factor_out(ld)
            factored.append(part)
            factored_ld.append(part_ld)
        elif isinstance(step, Squeeze):
            h, _ = step(h)
            ld = squeeze2d(ld)
        elif isinstance(step, ActNorm):
            h, _ = step(h)
            ld = ld + step.log_scale.view(1, -1, 1, 1)
        elif isinstance(step, InvertibleConv1x1):
            h, _ = step(h)
            ld = ld + step.log_abs_det() / h.shape[1]
        else:  # coupling
            h, _, extras = step.trace_forward(h)
            ld = ld + extras["s"]
    terms = -0.5 * h * h - 0.5 * math.log(2 * math.pi) + ld
    factored_terms = [-0.5 * z * z - 0.5 * math.log(2 * math.pi) + z_ld
                      for z, z_ld in zip(factored, factored_ld, strict=True)]
    return flow.assemble(terms, factored_terms).sum(1)


@torch.no_grad()
def averaged_latents(flow: FlowModel, x: Tensor, num_samples: int = 40, seed: int = 0) -> Tensor:
    """``z`` (in the input's shape) averaged over ``num_samples`` dequantization noise draws."""
    flow.eval()
    g = torch.Generator().manual_seed(seed)
    total = None
    for _ in range(num_samples):
        z, _ = flow(dequantize(x, generator=g))
        total = z if total is None else total + z
    return total / num_samples
