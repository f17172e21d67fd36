"""Export a flow's density to ONNX or OpenVINO, for scoring on an inference engine instead of PyTorch.

``flowood export --checkpoint C --format onnx|openvino --out DIR`` writes one folder:

* ``model.onnx`` (and with ``openvino`` also ``model.xml`` + ``model.bin``, OpenVINO's own format, weights in
  fp32): a graph with one input and two outputs,

  - input ``x``: float32 ``[batch, *input_shape]``, continuous inputs as :meth:`FlowModel.forward` takes them
    (for image flows: dequantized images in (0, 1); dequantization stays outside the graph, so it is seeded and
    identical to PyTorch's);
  - output ``log_prob``: float32 ``[batch]``, the log-likelihood in nats, as :meth:`FlowModel.log_prob` gives it
    for the dequantized point (for image flows the 1/256 bin width of every dimension is included);
  - output ``scale_log_prior``: float32 ``[batch, scales]``, the prior's log-density of each scale's latents,
    earliest first (what the per-scale latent scores need);

  the batch size is dynamic.
* ``flowood-export.json``: the input convention, the flow's configuration, the dimensions of each scale, and
  the parity check: at export the graph is run on an engine and on PyTorch on the same inputs (samples of the
  flow itself and noise, at two batch sizes); the largest difference of log-likelihood is recorded in nats and
  in bits/dim, and the export is refused when it exceeds ``tolerance`` bits/dim.

Glow's plain 1x1 convolutions compute ``log |det W|`` with ``slogdet``, which ONNX has no operator for; the
weights are fixed in an exported graph, so their log-determinants are computed once and stored as constants.
The exporter is PyTorch's ``torch.export``-based ONNX exporter (``onnx`` and ``onnxscript``, the extra
``export``); OpenVINO converts the ONNX graph (the extra ``openvino``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowood import __version__
from flowood.checkpoints import load_flow, weights_sha256
from flowood.engines.common import (
    EXPORT_FORMAT_VERSION,
    EXPORT_MANIFEST,
    EngineDensity,
    ExportError,
    ExportOptions,
    check_export_options,
    engines_for,
    require_module,
)
from flowood.engines.quantize import check_int8_cpu, conditioner_scopes
from flowood.engines.quantized import CheckSets, check_sets, quantize_export
from flowood.errors import ModelError
from flowood.flows.base import FlowLayer
from flowood.flows.capabilities import capabilities
from flowood.flows.layers import InvertibleConv1x1
from flowood.flows.model import FlowModel
from flowood.flows.preprocessing import dequantize
from flowood.options import ConfigError, merge_options
from flowood.outputs import atomic_write, open_output_folder, remove_output_folder, write_text_atomic

__all__ = ["export_flow", "ExportResult", "DensityGraph", "parity_inputs", "check_parity", "ExportTarget",
           "write_checked_export", "check_size", "DENSITY_NAMES", "MAX_ONNX_BYTES"]


class _FixedConv1x1(FlowLayer):
    """An invertible 1x1 convolution with its log-determinant precomputed (weights are fixed once exported)."""

    kind = "invconv"

    def __init__(self, conv: InvertibleConv1x1) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("weight", conv.matrix().detach().clone())
            self.register_buffer("log_abs_det", conv.log_abs_det().detach().clone().reshape(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spatial = x.shape[2] * x.shape[3]
        y = torch.matmul(self.weight, x.flatten(2)).view(x.shape)
        return y, (self.log_abs_det * spatial).expand(x.shape[0])


class DensityGraph(nn.Module):
    """What is exported: ``x -> (log_prob, scale_log_prior)`` of a flow (:meth:`FlowModel.log_prob_parts
    <flowood.flows.FlowModel.log_prob_parts>`), in fp32, eager and without data checks.

    Args:
        flow: the flow (copied; the copy's plain 1x1 convolutions get constant log-determinants).
    """

    def __init__(self, flow: FlowModel) -> None:
        super().__init__()
        if any(getattr(m, "initialization_pending", False) for m in flow.modules()):  # (the graph cannot branch)
            raise ModelError("the flow has a layer still waiting to initialise itself from data (an untrained "
                             "ActNorm or standardisation); train or load it before exporting")
        flow = copy.deepcopy(flow).float().eval().mixed_precision(None).compile_density(False)
        flow.to(memory_format=torch.contiguous_format)
        for i, step in enumerate(flow.steps):
            if isinstance(step, InvertibleConv1x1) and not step.lu:
                flow.steps[i] = _FixedConv1x1(step)
        self.flow = flow

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts = self.flow.log_prob_parts(x, validate=False)
        return parts.log_prob, parts.scale_log_prior


@dataclass
class ExportResult:
    """What :func:`export_flow` wrote and how closely the engine agrees with PyTorch.

    Attributes:
        path: the export folder.
        files: the files written in it.
        max_abs_diff_nats: the largest |log-likelihood difference| between engine and PyTorch, nats per sample.
        max_abs_diff_bpd: the same in bits/dim.
        tolerance_bpd: the largest difference allowed.
        seconds: time taken (export, conversion and check).
        quantization: for an INT8 export, what the manifest records of it (method, calibration data, the check
            against fp32 with bits/dim and AUROC per engine and set); None for fp32.
    """

    path: Path
    files: list[str]
    max_abs_diff_nats: float
    max_abs_diff_bpd: float
    tolerance_bpd: float
    seconds: float
    quantization: dict[str, Any] | None = None


def parity_inputs(flow: FlowModel, n: int = 16, seed: int = 0) -> Tensor:
    """Continuous inputs the parity check runs on (seeded), in the range the flow is used on: for image flows half
    samples of the flow itself and half uniform noise images, dequantized; for vector flows samples of the flow at
    temperatures 1 and 1.5 (noise in raw feature units could lie far outside the data, where float32 rounding
    alone moves log-likelihoods of -1e9 by more than any tolerance)."""
    g = torch.Generator().manual_seed(seed)
    half = n // 2
    with torch.no_grad():
        if flow.discrete:
            images = torch.cat([flow.sample(half, generator=g).float().cpu(),
                                torch.randint(0, 256, (n - half, *flow.input_shape), generator=g) / 255.0])
            x = dequantize(images, noise="uniform", generator=g).clamp(1e-4, 1 - 1e-4)
        else:
            x = torch.cat([flow.sample(half, generator=g).float().cpu(),
                           flow.sample(n - half, temperature=1.5, generator=g).float().cpu()])
    finite = torch.isfinite(x.flatten(1)).all(1)
    if not bool(finite.any()):
        raise ExportError("the flow's own samples are not finite (a diverged model?); there is nothing to check the "
                          "export on")
    return x[finite]


#: ONNX files are single protobuf messages, which cannot exceed 2 GiB; flowood writes one file per graph.
MAX_ONNX_BYTES = 2**31 - 2**26


def check_size(graph: nn.Module) -> None:
    """Refuse, before anything is written, a flow whose weights do not fit in one ONNX file."""
    weights = sum(t.numel() * t.element_size() for t in (*graph.parameters(), *graph.buffers()))
    if weights > MAX_ONNX_BYTES:
        raise ExportError(f"the model's weights take {weights / 2**30:.2f} GiB; an ONNX file holds at most 2 GiB "
                          "(every paper configuration fits: the largest, ImageNet 64 RealNVP, takes 1.34 GiB)")


#: the names of a density graph's input and outputs.
DENSITY_NAMES = (("x",), ("log_prob", "scale_log_prior"))


def _write_onnx(graph: nn.Module, example: Tensor, path: Path, names: tuple[tuple[str, ...], tuple[str, ...]]
                = DENSITY_NAMES) -> None:
    """The graph through ``torch.export`` to ONNX (one input with a dynamic batch, onnxscript's optimiser), in one
    file; ``names`` are its ``(input names, output names)``."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation notes
        try:
            program = torch.onnx.export(graph, (example,), input_names=list(names[0]), output_names=list(names[1]),
                                        dynamic_shapes=({0: batch},), dynamo=True, optimize=True, verbose=False)
        except Exception as err:  # the exporter's own errors are many and long: the first line says what failed
            raise ExportError(f"PyTorch's ONNX exporter could not export this model: {str(err).splitlines()[0]}") \
                from err
    try:
        program.save(str(path), external_data=False)
    except Exception as err:
        raise ExportError(f"the ONNX graph could not be written: {str(err).splitlines()[0]}") from err


def _write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO's IR (``.xml`` graph, ``.bin`` fp32 weights) converted from the ONNX graph, each file atomic."""
    ov = require_module("openvino")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as err:
        raise ExportError(f"OpenVINO could not convert the ONNX graph: {str(err).splitlines()[0]}") from err
    with atomic_write(xml_path) as tmp_xml, atomic_write(xml_path.with_suffix(".bin")) as tmp_bin:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)  # writes the weights beside it, as .bin
        tmp_xml.with_suffix(".bin").replace(tmp_bin)


def export_flow(model: FlowModel | str | Path, out: str | Path, options: ExportOptions | None = None, *,
                overwrite: bool = False, **option_values: Any) -> ExportResult:
    """Export a flow's density (see the module docstring for the graph) and check it against PyTorch.

    Args:
        model: a flow, or the path of a checkpoint written by ``flowood train``.
        out: the export folder (checked, created and locked as every flowood output folder).
        options: an :class:`ExportOptions` (format, tolerance in bits/dim, parity-check inputs, seed).
        overwrite: replace an earlier export in ``out``.
        **option_values: any field of :class:`ExportOptions`, e.g. ``format="openvino"``.

    Returns:
        an :class:`ExportResult`.

    Raises:
        ConfigError: unknown format, or the exporter packages are missing. ExportError: the flow cannot be exported,
            or the engine disagrees with PyTorch beyond the tolerance (the folder is then removed). OutputError:
            ``out`` is unsafe.

    Example:
        >>> from flowood.flows import RealNVP
        >>> result = export_flow(RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4), "runs/export")  # doctest: +SKIP
        >>> result.max_abs_diff_bpd < 1e-4  # doctest: +SKIP
        True
    """
    o = check_export_options(merge_options(ExportOptions, options, option_values), "flow")
    start = time.perf_counter()
    flow, source = _source_flow(model)
    graph = DensityGraph(flow)
    x = parity_inputs(flow, o.check_samples, o.seed)
    check_size(graph)
    sets = _int8_sets(graph, source, o)  # before anything is written: a CPU or data that cannot do it is refused

    def check(folder: Path) -> dict[str, Any]:
        parity = check_parity(graph, folder, engines_for(o.format), x, o)
        if not parity["max_abs_diff_bpd"] <= o.tolerance:
            raise ExportError(f"the exported graph disagrees with PyTorch by {parity['max_abs_diff_bpd']:.3g} "
                              f"bits/dim ({parity['max_abs_diff_nats']:.3g} nats) on {parity['worst_engine']}, "
                              f"above the tolerance {o.tolerance:g}; nothing was kept")
        if sets is not None:
            parity["quantization"] = quantize_export(folder, graph, sets, o.format, o)
        return parity
    target = ExportTarget(out, o.format, [source["path"]] if source["path"] else [], overwrite)
    path, files, parity = write_checked_export(graph, x[:2], target, check,
                                               lambda files, parity: _manifest(flow, source, files, parity))
    return ExportResult(path, files + [EXPORT_MANIFEST], parity["max_abs_diff_nats"],
                        parity["max_abs_diff_bpd"], o.tolerance, time.perf_counter() - start,
                        parity.get("quantization"))


def _int8_sets(graph: DensityGraph, source: dict[str, Any], o: ExportOptions) -> CheckSets | None:
    """For an INT8 export, the CPU checked and its calibration and check data loaded; None otherwise."""
    if o.quantize != "int8":
        return None
    check_int8_cpu()
    conditioner_scopes(graph)  # a flow without st-networks is refused before the data are read
    return check_sets(graph.flow, source["train_config"], o)


@dataclass
class ExportTarget:
    """Where :func:`write_checked_export` writes.

    Attributes:
        out: the export folder (checked, created and locked as every flowood output folder).
        format: ``onnx`` or ``openvino``.
        inputs: the files the export is made from (the folder may not be, hold or lie in one of them).
        overwrite: replace an earlier export in ``out``.
    """

    out: str | Path
    format: str
    inputs: list[Any] = field(default_factory=list)
    overwrite: bool = False


def write_checked_export(graph: nn.Module, example: Tensor, target: ExportTarget,
                         check: Callable[[Path], dict[str, Any]],
                         manifest: Callable[[list[str], dict[str, Any]], dict[str, Any]],
                         names: tuple[tuple[str, ...], tuple[str, ...]] = DENSITY_NAMES
                         ) -> tuple[Path, list[str], dict[str, Any]]:
    """Write ``graph`` (traced on ``example``, its input and outputs named ``names``) into the export folder
    ``target.out`` (``model.onnx``, and OpenVINO's files for ``openvino``), run ``check(folder)`` (the parity check: it
    returns what the manifest records, or raises :class:`ExportError`), then write ``flowood-export.json`` from
    ``manifest(files, parity)``. A failed or interrupted export keeps nothing.

    Returns:
        ``(folder, graph files written, parity)``.
    """
    existed = Path(target.out).expanduser().is_dir()
    with open_output_folder(target.out, "export", target.inputs, overwrite=target.overwrite) as folder:
        try:
            files = _write_graph(graph, example, folder, target.format, names)
            parity = check(folder.path)
            write_text_atomic(folder.path / EXPORT_MANIFEST, json.dumps(manifest(files, parity), indent=2))
        except BaseException:  # a failed or interrupted export keeps nothing
            folder.close()
            remove_output_folder(folder.path)
            if existed:
                folder.path.mkdir(exist_ok=True)  # a folder that was there (empty) before stays
            raise
    return folder.path, files, parity


def _write_graph(graph: nn.Module, example: Tensor, folder: Any, format: str,
                 names: tuple[tuple[str, ...], tuple[str, ...]] = DENSITY_NAMES) -> list[str]:
    """model.onnx, and for ``openvino`` model.xml/model.bin converted from it; the files written."""
    with atomic_write(folder.path / "model.onnx") as tmp:
        _write_onnx(graph, example, tmp, names)
    if format != "openvino":
        return ["model.onnx"]
    _write_openvino(folder.path / "model.onnx", folder.path / "model.xml")
    return ["model.onnx", "model.bin", "model.xml"]


def _source_flow(model: FlowModel | str | Path) -> tuple[FlowModel, dict[str, Any]]:
    """A CPU copy of the flow to export (the caller's stays where it is), and what is known of where it came from."""
    source: dict[str, Any] = {"path": None, "train_config": {}, "checkpoint_sha256": None}
    if isinstance(model, (str, Path)):
        loaded = load_flow(model)
        flow = loaded.flow
        source = {"path": Path(model), "train_config": loaded.train_config, "checkpoint_sha256": loaded.sha256}
    elif capabilities(model).traceable:
        flow = copy.deepcopy(model)
    else:
        raise ConfigError(f"only flowood flows can be exported, got {type(model).__name__}")
    return flow.cpu().eval(), source


def check_parity(graph: DensityGraph, folder: Path, engines: list[str], x: Tensor, options: ExportOptions
                 ) -> dict[str, Any]:
    """Run the exported graph on each engine (fp32) and the PyTorch graph on the same inputs, at their batch size and
    at 3 (so the dynamic batch is exercised): the largest |difference| of log-likelihood (nats and bits/dim) and of
    each scale's prior log-density (bits per dimension of that scale), per engine and over all.

    Raises:
        ExportError: an engine cannot load or run the graph.
    """
    with torch.no_grad():
        ref_log_prob, ref_priors = (t.double().numpy() for t in graph(x))
    dims = np.array(graph.flow.scale_dims, dtype=np.float64)
    per_engine = {}
    for engine in engines:
        try:
            compiled = EngineDensity(folder, engine, manifest={"outputs": ["log_prob", "scale_log_prior"]})
            runs = [compiled.run(x.numpy()), compiled.run(x[:3].numpy())]
        except Exception as err:
            raise ExportError(f"{engine} could not run the exported graph: {str(err).splitlines()[0]}") from err
        log_prob = np.concatenate([r[0] for r in runs]).astype(np.float64)
        priors = np.concatenate([r[1] for r in runs]).astype(np.float64)
        expected = np.concatenate([ref_log_prob, ref_log_prob[:3]])
        expected_priors = np.concatenate([ref_priors, ref_priors[:3]])
        nats = float(np.max(np.abs(log_prob - expected))) if np.isfinite(log_prob).all() else math.inf
        prior_bpd = float(np.max(np.abs(priors - expected_priors) / (dims * math.log(2)))) \
            if np.isfinite(priors).all() else math.inf
        per_engine[engine] = {"max_abs_diff_nats": nats, "max_abs_diff_bpd": nats / (graph.flow.num_dims * math.log(2)),
                              "scale_log_prior_max_abs_diff_bpd": prior_bpd}
    worst = max(per_engine, key=lambda e: max(per_engine[e]["max_abs_diff_bpd"],
                                              per_engine[e]["scale_log_prior_max_abs_diff_bpd"]))
    w = per_engine[worst]
    return {"engines": engines, "precision": "fp32", "samples": len(x), "batch_sizes": [len(x), 3],
            "max_abs_diff_nats": w["max_abs_diff_nats"],
            "max_abs_diff_bpd": max(w["max_abs_diff_bpd"], w["scale_log_prior_max_abs_diff_bpd"]),
            "worst_engine": worst, "per_engine": per_engine, "tolerance_bpd": options.tolerance, "seed": options.seed}


def _manifest(flow: FlowModel, source: dict[str, Any], files: list[str], parity: dict[str, Any]) -> dict[str, Any]:
    """The contents of flowood-export.json: the graph's convention, the flow, where it came from, the parity check."""
    convention = "dequantized 8-bit images in (0, 1)" if flow.discrete else "continuous vectors as the flow takes them"
    quantization = parity.get("quantization")
    parity = {k: v for k, v in parity.items() if k != "quantization"}  # the fp32 graph's parity with PyTorch
    return {
        "format": EXPORT_FORMAT_VERSION, "flowood_version": __version__, "torch_version": torch.__version__,
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
        "source": str(source["path"]) if source["path"] else "a model in memory",
        "checkpoint_sha256": source["checkpoint_sha256"], "files": files,
        "input": {"name": "x", "shape": ["batch", *flow.input_shape], "dtype": "float32", "convention": convention},
        "outputs": ["log_prob", "scale_log_prior"], "input_shape": list(flow.input_shape), "discrete": flow.discrete,
        "num_dims": flow.num_dims, "scale_dims": flow.scale_dims, "flow_config": flow.config,
        "weights_sha256": weights_sha256(flow.state_dict()),
        "train_config": source["train_config"], "parity": parity,
        "precision": "int8" if quantization else "fp32", "quantization": quantization,
    }
