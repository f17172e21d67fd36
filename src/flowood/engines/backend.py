"""Score with an exported flow on ONNX Runtime or OpenVINO, through the same API as a PyTorch flow.

:class:`EngineFlow` wraps an export folder (see :mod:`flowood.engines.export`) and offers what flowood's scores,
the detector and ``flowood evaluate`` ask of a flow: ``log_prob``/``bits_per_dim`` of 8-bit images or vectors
(dequantized in PyTorch with the same seeded noise, so the numbers equal PyTorch's within the export's
tolerance), ``log_prior_by_scale`` for the per-scale latent scores, and the flow's configuration (the likelihood
ratio trains its background flow in PyTorch from it). What needs the network itself (inspection, sampling,
``trace``) stays with PyTorch flows.

Example (with an export folder written by ``flowood export``)::

    flow = EngineFlow("runs/demo/export", backend="onnxruntime")
    bpd = flow.bits_per_dim(images_uint8)
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowood.flows.capabilities import capabilities
from flowood.flows.model import check_batch
from flowood.options import ConfigError

__all__ = ["BACKENDS", "ENGINES", "EngineDensity", "EngineFlow", "engine_flow", "engine_device", "backend_option",
           "read_manifest"]

#: where a flow can be scored: PyTorch, or an exported graph on an inference engine.
BACKENDS = ("torch", "onnxruntime", "openvino")
ENGINES = BACKENDS[1:]
#: engine precisions: fp32 everywhere; bf16 on OpenVINO where the CPU has bf16 instructions.
PRECISIONS = ("fp32", "bf16")


def backend_option() -> Any:
    from flowood.options import option

    return option("torch", "where the flow is scored: torch, or onnxruntime / openvino (the flow is exported to "
                  "ONNX first and checked against PyTorch; extras `onnxruntime`, `openvino`)", choices=BACKENDS)


def engine_device(backend: str, device: str) -> str:
    """The device a flow is scored on with ``backend``: ``device`` for torch; for an engine the CPU (``auto`` means
    it).

    Raises:
        ConfigError: an engine asked to score on another device.
    """
    if backend == "torch":
        return device
    from flowood.runtime import resolve_device

    if device != "auto" and resolve_device(device).type != "cpu":
        raise ConfigError(f"the {backend} backend scores on the CPU; pass device='cpu' (or backend='torch' for the "
                          "GPU)")
    return "cpu"


def _threads() -> int:
    return max(1, torch.get_num_threads())  # flowood's share of the cores (see flowood.runtime.CoreShare)


_MANIFEST_KEYS = {"flow": ("input_shape", "discrete", "scale_dims", "flow_config", "parity"),
                  "detector": ("input", "input_shape", "outputs", "score", "threshold", "fpr", "reference_scores",
                               "parity")}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``flowood-export.json`` of an export folder, checked.

    Raises:
        ConfigError: no such file, unreadable, from another program or version, or missing fields.
    """
    from flowood.engines.export import EXPORT_FORMAT_VERSION, EXPORT_MANIFEST

    path = Path(folder) / EXPORT_MANIFEST
    if not path.is_file():
        raise ConfigError(f"{folder} is not a flowood export folder (no {EXPORT_MANIFEST}); write one with "
                          "`flowood export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read ({err}); export the flow again with `flowood export`") from err
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT_VERSION:
        raise ConfigError(f"{path} is not a {EXPORT_FORMAT_VERSION} manifest; export the flow again with this "
                          "flowood's `flowood export`")
    kind = manifest.get("kind", "flow")
    missing = [k for k in _MANIFEST_KEYS.get(kind, ("kind",)) if k not in manifest]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}; export the {kind} again with `flowood export`")
    return manifest


class EngineDensity:
    """An exported density graph compiled on an engine: ``run(x) -> (log_prob, scale_log_prior)`` as numpy.

    Args:
        folder: an export folder.
        backend: ``onnxruntime`` or ``openvino``.
        precision: ``fp32``; ``bf16`` runs OpenVINO's bf16 kernels (only where the CPU supports them).
        threads: intra-op threads (default: PyTorch's current count, flowood's share of the cores).
        manifest: the export's description (default: read from the folder).
    """

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                 threads: int | None = None, manifest: dict[str, Any] | None = None) -> None:
        from flowood.engines.export import require_module

        self.folder = Path(folder)
        if backend not in ENGINES:
            raise ConfigError(f"unknown engine {backend!r}; choose {' or '.join(ENGINES)}")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown engine precision {precision!r}; choose {' or '.join(PRECISIONS)}")
        self.manifest = manifest if manifest is not None else read_manifest(self.folder)
        self.backend, self.precision = backend, precision
        threads = threads or _threads()
        onnx_path = self.folder / "model.onnx"
        if not onnx_path.is_file():
            raise ConfigError(f"{self.folder} has no model.onnx; export the flow again with `flowood export`")
        if backend == "onnxruntime":
            if precision != "fp32":
                raise ConfigError("ONNX Runtime scores in fp32 on CPUs; bf16 is OpenVINO's (backend openvino)")
            ort = require_module("onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        else:
            ov = require_module("openvino")
            core = ov.Core()
            if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                raise ConfigError("this CPU has no bf16 instructions OpenVINO can use; score in fp32")
            xml = self.folder / "model.xml"
            model = core.read_model(str(xml if xml.is_file() else onnx_path))
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision.replace("fp", "f"),
                      "PERFORMANCE_HINT": "LATENCY"}
            self._compiled = core.compile_model(model, "CPU", config)
            self._request = self._compiled.create_infer_request()

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The graph's outputs for one batch: ``(log_prob [B], scale_log_prior [B, scales])`` of a float32 batch of
        continuous inputs for a flow; what the manifest's ``outputs`` name for another graph (a detector's
        ``(score, ood)`` of uint8 images). The input is given the dtype the manifest states (float32 by default)."""
        spec = self.manifest.get("input") or {}
        x = np.ascontiguousarray(x, dtype=np.dtype(spec.get("dtype", "float32")))
        if self.backend == "onnxruntime":
            return tuple(self._session.run(None, {spec.get("name", "x"): x}))
        result = self._request.infer({0: x})
        return tuple(np.array(result[i]) for i in range(len(self._compiled.outputs)))


class EngineFlow(nn.Module):
    """An exported flow on an engine, scored like a :class:`~flowood.flows.FlowModel`.

    Args:
        folder: an export folder written by :func:`~flowood.engines.export_flow`.
        backend: ``onnxruntime`` or ``openvino``.
        precision: ``fp32``, or ``bf16`` on OpenVINO.
        threads: intra-op threads of the engine (default: flowood's share of the cores).
    """

    # capability flags of the density protocol (see flowood.flows.capabilities): an exported flowood flow
    flowood_api = exported = rebuildable = scale_latents = True
    traceable = False

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                 threads: int | None = None) -> None:
        super().__init__()
        manifest = read_manifest(Path(folder))
        if manifest.get("kind", "flow") != "flow":
            raise ConfigError(f"{folder} holds an exported detector (images in, anomaly scores out), not a flow's "
                              "density; score images with the detector file it was exported from")
        self.engine = EngineDensity(folder, backend, precision, threads, manifest)
        m = self.engine.manifest
        self.input_shape = tuple(m["input_shape"])
        self.discrete = bool(m["discrete"])
        self.scale_dims = [int(d) for d in m["scale_dims"]]
        self.config = dict(m["flow_config"])
        self.parity = m["parity"]
        checked = self.parity.get("engines", [])
        if backend not in checked:
            warnings.warn(f"this export's parity with PyTorch was checked on {', '.join(checked) or 'no engine'}, not "
                          f"on {backend}; export again with {backend} installed to check it there", stacklevel=2)

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def num_dims(self) -> int:
        return math.prod(self.input_shape)

    @property
    def num_scales(self) -> int:
        return len(self.scale_dims)

    def check_input(self, x: Tensor, image_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
        """Refuse what the flow could not score, as :meth:`FlowModel.check_input` (float inputs of any dtype: the
        engine takes float32)."""
        check_batch(x, self.input_shape, self.discrete, None, image_range)

    def _continuous(self, x: Tensor, noise: str, generator: torch.Generator | None) -> Tensor:
        from flowood.flows.preprocessing import dequantize

        x = x.cpu()
        if self.discrete:
            return dequantize(x, noise=noise, generator=generator)
        return x.float()

    def _run(self, x: Tensor, noise: str, generator: torch.Generator | None, validate: bool
             ) -> tuple[np.ndarray, np.ndarray]:
        if validate:
            self.check_input(x)
        return self.engine.run(self._continuous(x, noise, generator).numpy())

    def log_prob(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None,
                 validate: bool = True) -> Tensor:
        """Per-sample log-likelihood in nats, as :meth:`FlowModel.log_prob` (computed by the engine)."""
        return torch.from_numpy(self._run(x, noise, generator, validate)[0].copy())

    def bits_per_dim(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Per-sample negative log-likelihood in bits per dimension."""
        return -self.log_prob(x, **kwargs) / (self.num_dims * math.log(2.0))

    def log_prior_by_scale(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None
                           ) -> Tensor:
        """The prior's log-density of each scale's latents, ``[B, scales]``, as :meth:`FlowModel.log_prior_by_scale`."""
        return torch.from_numpy(self._run(x, noise, generator, False)[1].copy())

    def extra_repr(self) -> str:
        return f"backend={self.backend}, input_shape={self.input_shape}, folder={self.engine.folder}"


def engine_flow(flow: Any, backend: str, folder: str | Path | None = None, precision: str = "fp32",
                tolerance: float | None = None) -> Any:
    """A flow on ``backend``: the flow itself for ``torch``, else exported (into ``folder``, or a temporary folder
    that lives as long as the returned flow) and loaded on the engine.

    Raises:
        ConfigError: an unknown backend, or a model that is not a flowood flow (only those can be exported).
    """
    from flowood.engines.export import DEFAULT_TOLERANCE, export_flow

    if backend == "torch":
        return flow
    if backend not in ENGINES:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    found = capabilities(flow)
    if found.exported:
        if flow.backend != backend or flow.engine.precision != precision:
            raise ConfigError(f"this flow is loaded on {flow.backend} in {flow.engine.precision}, not {backend} in "
                              f"{precision}; load the export folder again with EngineFlow(folder, {backend!r}, "
                              f"{precision!r})")
        return flow
    if not found.traceable:
        raise ConfigError(f"only flowood flows can be scored on {backend} (they are exported first); this model is "
                          f"a {type(flow).__name__}")
    scratch = None
    if folder is None:
        scratch = tempfile.TemporaryDirectory(prefix="flowood-export-")
        folder = Path(scratch.name) / "export"
    export_flow(flow, folder, format="openvino" if backend == "openvino" else "onnx",
                tolerance=tolerance or DEFAULT_TOLERANCE, overwrite=True)
    result = EngineFlow(folder, backend, precision)
    result._scratch = scratch  # removed with the flow
    return result
