"""The INT8 export of a flow, checked against fp32 on held-out and OOD data before anything is kept.

``flowood export --checkpoint C --quantize int8 [--calibration 256] [--check_ood mnist ...]`` first writes and
checks the fp32 graph as every export does, then:

1. **Calibration.** ``calibration`` training inputs of the in-distribution set (a seeded subset, dequantized with
   seeded noise for image flows) set the INT8 activation ranges of the st-networks
   (:func:`~flowood.engines.quantize.quantize_density`).
2. **The check.** The fp32 and the INT8 graph score ``check_held_out`` held-out (test split) in-distribution inputs
   and as many of each OOD set (``check_ood``, by default the set the checkpoint monitored in training,
   ``monitor_ood``) on the export's own engine (ONNX Runtime for ``onnx``, OpenVINO for ``openvino``), on the same
   dequantized inputs. The engines read a quantized graph differently (OpenVINO re-derives its own INT8 kernels from
   the graph's quantize/dequantize pairs, and its bits/dim moved about twice as far as ONNX Runtime's on the demo's
   RealNVP), so an INT8 export is scored only on the engine it was checked on. Recorded per
   engine and set: mean bits/dim in fp32 and INT8, the mean and largest shift; per OOD set: the AUROC of bits/dim
   (OOD positive) in fp32 and INT8. The export is refused, with the numbers printed and nothing kept, when the mean
   bits/dim shift on held-out in-distribution data exceeds ``max_bpd_shift`` (0.05), or an AUROC moves by more than
   ``max_auroc_shift`` (0.005). OOD sets' bits/dim shifts are reported, not held to a tolerance: the
   ranges are calibrated on in-distribution data, and what matters out of distribution is the ranking (the AUROC).
3. ``model.onnx`` (and OpenVINO's ``model.xml``/``.bin``) is replaced by the INT8 graph; the manifest's ``precision``
   says ``int8`` and ``quantization`` keeps the method, the calibration data and the check.

Scoring an INT8 export needs no option: ``flowood evaluate/score/serve --backend``, :class:`~flowood.engines.EngineFlow`
and ``OODDetector.load`` read ``model.onnx`` whatever its precision, and refuse a CPU without INT8 dot-product
instructions (:func:`~flowood.engines.common.check_int8_cpu`) and an engine the check did not run on.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from flowood.data import load_dataset
from flowood.data.adapt import fit_to_shape
from flowood.engines.common import EngineDensity, ExportError, ExportOptions
from flowood.engines.quantize import conditioner_scopes, quantize_density, quantize_openvino
from flowood.flows.preprocessing import dequantize
from flowood.options import ConfigError
from flowood.outputs import atomic_write

__all__ = ["CheckSets", "check_sets", "int8_check", "check_table", "quantize_export", "quantize_in_place", "ood_auroc",
           "IN_DISTRIBUTION"]

#: the name of the held-out in-distribution set in the check's results.
IN_DISTRIBUTION = "in-distribution (held-out)"


@dataclass
class CheckSets:
    """The inputs of an INT8 export, as the graph takes them: float32 for a flow; uint8 images (or float32 vectors)
    for a detector (:mod:`flowood.deploy.quantized`).

    Attributes:
        dataset: the in-distribution set's name.
        calibration: training inputs the activation ranges are calibrated on.
        held_out: test inputs of the in-distribution set.
        ood: test inputs of each OOD set, by name.
    """

    dataset: str
    calibration: np.ndarray
    held_out: np.ndarray
    ood: dict[str, np.ndarray]


def _graph_inputs(flow: Any, name: str, split: str, root: str | None, n: int, seed: int) -> np.ndarray:
    """``n`` samples of a set's split, in the flow's input shape, as the graph takes them: the subset and the
    dequantization noise that ``flowood evaluate`` (``max_samples=n``, ``seed``) scores, so its AUROC on the export
    reproduces the check's."""
    ds = load_dataset(name, split, root, shape=flow.input_shape).take(n, seed=seed)
    x = fit_to_shape(ds, tuple(flow.input_shape))
    if flow.discrete:
        x = dequantize(x, noise="uniform", generator=torch.Generator().manual_seed(seed))
    return x.float().numpy()


def check_sets(flow: Any, train_config: dict[str, Any], o: ExportOptions) -> CheckSets:
    """Load the calibration, held-out and OOD inputs of an INT8 export (see the module docstring).

    Raises:
        ConfigError: no in-distribution set known (``dataset``), or no OOD set (``check_ood``). DataError: a set
            cannot be read or does not fit the flow.
    """
    name = o.dataset or train_config.get("dataset")
    if not name:
        raise ConfigError("an INT8 export is calibrated and checked on the flow's in-distribution data, and this flow "
                          "does not say which it is; pass dataset")
    monitored = train_config.get("monitor_ood")
    ood = list(o.check_ood) or ([monitored] if monitored else [])
    if not ood:
        raise ConfigError("an INT8 export is checked on at least one OOD set and the checkpoint names none "
                          "(monitor_ood); pass check_ood, e.g. check_ood=['mnist']")
    root = o.data_root or train_config.get("data_root")
    return CheckSets(name, _graph_inputs(flow, name, "train", root, o.calibration, o.seed),
                     _graph_inputs(flow, name, "test", root, o.check_held_out, o.seed),
                     {n: _graph_inputs(flow, n, "test", root, o.check_held_out, o.seed) for n in ood})


def ood_auroc(ind: np.ndarray, ood: np.ndarray) -> float:
    """AUROC of a score that is higher out of distribution (bits/dim, an anomaly score), OOD positive
    (scikit-learn's)."""
    return float(roc_auc_score(np.r_[np.zeros(len(ind)), np.ones(len(ood))], np.r_[ind, ood]))


def _bits_per_dim(density: EngineDensity, x: np.ndarray, num_dims: int, batch: int = 256) -> np.ndarray:
    return -density.run_batches(x, batch) / (num_dims * math.log(2.0))


def _engine_check(fp32: EngineDensity, int8: EngineDensity, sets: CheckSets, num_dims: int) -> dict[str, Any]:
    """One engine's numbers: bits/dim per set in fp32 and INT8, and the AUROC of each OOD set."""
    named = {IN_DISTRIBUTION: sets.held_out, **sets.ood}
    bpd = {name: (_bits_per_dim(fp32, x, num_dims), _bits_per_dim(int8, x, num_dims)) for name, x in named.items()}
    for name, (a, b) in bpd.items():
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ExportError(f"the {'INT8' if np.isfinite(a).all() else 'fp32'} graph gives non-finite bits/dim on "
                              f"{name}; nothing was kept")
    result: dict[str, Any] = {"bits_per_dim": {name: {
        "fp32": float(a.mean()), "int8": float(b.mean()), "mean_shift": float((b - a).mean()),
        "max_abs_shift": float(np.abs(b - a).max())} for name, (a, b) in bpd.items()}, "auroc": {}}
    ind32, ind8 = bpd[IN_DISTRIBUTION]
    for name in sets.ood:
        a, b = ood_auroc(ind32, bpd[name][0]), ood_auroc(ind8, bpd[name][1])
        result["auroc"][name] = {"fp32": a, "int8": b, "shift": b - a}
    return result


def int8_check(fp32_folder: Path, int8_folder: Path, engines: list[str], sets: CheckSets, num_dims: int,
               o: ExportOptions) -> dict[str, Any]:
    """Score the sets with the fp32 and the INT8 graph (``model.onnx`` in each folder) on every engine, and refuse
    beyond the tolerances.

    Returns:
        ``{"engines", "per_engine": {engine: numbers}, "worst_bpd_shift", "worst_auroc_shift", tolerances}``.

    Raises:
        ExportError: beyond a tolerance (the message has the numbers), or an engine cannot run a graph.
    """
    outputs = {"outputs": ["log_prob", "scale_log_prior"]}
    per_engine = {}
    for engine in engines:
        try:
            fp32, int8 = (EngineDensity(f, engine, manifest=outputs) for f in (fp32_folder, int8_folder))
        except Exception as err:
            raise ExportError(f"{engine} could not load the INT8 graph: {str(err).splitlines()[0]}") from err
        per_engine[engine] = _engine_check(fp32, int8, sets, num_dims)
    bpd_shift = max((r["bits_per_dim"][IN_DISTRIBUTION]["mean_shift"] for r in per_engine.values()), key=abs)
    auroc_shift = max((a["shift"] for r in per_engine.values() for a in r["auroc"].values()), key=abs)
    check = {"engines": engines, "per_engine": per_engine, "held_out_samples": len(sets.held_out),
             "ood_samples": {n: len(x) for n, x in sets.ood.items()}, "worst_bpd_shift": bpd_shift,
             "worst_auroc_shift": auroc_shift, "max_bpd_shift": o.max_bpd_shift, "max_auroc_shift": o.max_auroc_shift}
    if abs(bpd_shift) > o.max_bpd_shift or abs(auroc_shift) > o.max_auroc_shift:
        raise ExportError(f"the INT8 graph moves the mean bits/dim on held-out {sets.dataset} by {bpd_shift:+.4f} "
                          f"(tolerance {o.max_bpd_shift:g}) and the AUROC by up to {auroc_shift:+.4f} (tolerance "
                          f"{o.max_auroc_shift:g}):\n{check_table(check)}\nnothing was kept; calibrate on more inputs "
                          "(calibration) or export in fp32")
    return check


def check_table(check: dict[str, Any]) -> str:
    """The check's numbers as lines: per engine and set, bits/dim fp32 -> INT8 and the AUROC fp32 -> INT8."""
    lines = []
    for engine, r in check["per_engine"].items():
        for name, b in r["bits_per_dim"].items():
            a = r["auroc"].get(name)
            shown = f", AUROC {a['fp32']:.4f} -> {a['int8']:.4f} ({a['shift']:+.4f})" if a else ""
            lines.append(f"  {engine}, {name}: bits/dim {b['fp32']:.4f} -> {b['int8']:.4f} (mean shift "
                         f"{b['mean_shift']:+.4f}){shown}")
    return "\n".join(lines)


def quantize_in_place(folder: Path, scopes: list[str], calibration: np.ndarray, format: str,
                      check: Callable[[Path, str], dict[str, Any]],
                      onnxruntime_op_types: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Quantize the checked fp32 graph in ``folder`` (``model.onnx``), the nodes made inside ``scopes``, with the
    engine's own tool (ONNX Runtime for ``onnx``, NNCF for ``openvino``), run ``check(candidate_folder, engine)`` on
    the result (it raises to refuse) and put it in place: ``model.onnx`` replaced for ``onnx``;
    ``model.xml``/``model.bin`` for ``openvino`` (``model.onnx`` stays the fp32 graph they were made from).
    ``onnxruntime_op_types``: for ONNX Runtime, the operators quantized inside some scopes (see
    :func:`~flowood.engines.quantize.quantize_density`).

    Returns:
        what the quantizer did (:func:`~flowood.engines.quantize.quantize_density`) and, under ``check``, what the
        check returned.

    Raises:
        ExportError: quantization failed, or the check refused the INT8 graph.
    """
    engine = "openvino" if format == "openvino" else "onnxruntime"
    with tempfile.TemporaryDirectory(prefix="flowood-int8-") as tmp:
        candidate = Path(tmp)
        if engine == "openvino":
            method = quantize_openvino(folder / "model.onnx", candidate / "model.xml", scopes, calibration)
        else:
            method = quantize_density(folder / "model.onnx", candidate / "model.onnx", scopes, calibration,
                                      op_types=onnxruntime_op_types)
        result = check(candidate, engine)
        for path in sorted(candidate.iterdir()):
            with atomic_write(folder / path.name) as tmp_file:
                shutil.copyfile(path, tmp_file)
    return {**method, "check": result}


def quantize_export(folder: Path, graph: Any, sets: CheckSets, format: str, o: ExportOptions) -> dict[str, Any]:
    """Quantize a flow's checked fp32 graph in ``folder`` (its st-networks, see :func:`quantize_in_place`), check it
    against fp32 (see the module docstring) and put it in place. What the manifest records under ``quantization``.

    Raises:
        ExportError: quantization failed, or the check refused the INT8 graph.
    """
    flow = graph.flow
    done = quantize_in_place(folder, conditioner_scopes(graph), sets.calibration, format,
                             lambda candidate, engine: int8_check(folder, candidate, [engine], sets, flow.num_dims, o))
    return {**done, "calibration_data": {"dataset": sets.dataset, "split": "train", "samples": len(sets.calibration),
                                         "seed": o.seed}}
