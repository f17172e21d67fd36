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

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowood.engines.common import DEFAULT_TOLERANCE, ENGINES, EngineDensity, read_manifest
from flowood.engines.export import export_flow
from flowood.flows.capabilities import capabilities
from flowood.flows.model import check_batch
from flowood.flows.preprocessing import dequantize
from flowood.options import ConfigError, option
from flowood.runtime import resolve_device

__all__ = ["BACKENDS", "ENGINES", "EngineFlow", "engine_flow", "engine_device", "backend_option", "flow_export_option",
           "check_flow_export"]

#: where a flow can be scored: PyTorch, or an exported graph on an inference engine.
BACKENDS = ("torch", *ENGINES)


def backend_option() -> Any:
    """The backend option (one definition, used by every command that scores a flow)."""
    return option("torch", "where the flow is scored: torch, or onnxruntime / openvino (the flow is exported to "
                  "ONNX first and checked against PyTorch; extras `onnxruntime`, `openvino`)", choices=BACKENDS)


def flow_export_option() -> Any:
    """The option naming an export of a detector's flow to score on (one definition, used by score and serve)."""
    return option(None, "an export folder of the detector's flow (flowood export --checkpoint, in fp32 or INT8) to "
                  "score on with an engine backend, instead of exporting the flow again", metavar="DIR")


def check_flow_export(folder: str | Path, backend: str, weights: str) -> EngineFlow:
    """The flow of an export folder on ``backend``, refused unless it is the flow whose weights hash to ``weights``.

    Raises:
        ConfigError: the backend is torch, the folder is no flow export, or it holds another flow.
    """
    if backend not in ENGINES:
        raise ConfigError(f"an export folder is scored on an engine: pass backend='onnxruntime' or 'openvino', not "
                          f"{backend!r}")
    flow = EngineFlow(folder, backend)
    if flow.engine.manifest.get("weights_sha256") != weights:
        raise ConfigError(f"{folder} is an export of another flow than this detector's (its weights differ); export "
                          "the detector's own checkpoint")
    return flow


def engine_device(backend: str, device: str) -> str:
    """The device a flow is scored on with ``backend``: ``device`` for torch; for an engine the CPU (``auto`` means
    it).

    Raises:
        ConfigError: an engine asked to score on another device.
    """
    if backend == "torch":
        return device
    if device != "auto" and resolve_device(device).type != "cpu":
        raise ConfigError(f"the {backend} backend scores on the CPU; pass device='cpu' (or backend='torch' for the "
                          "GPU)")
    return "cpu"


class EngineFlow(nn.Module):
    """An exported flow on an engine, scored like a :class:`~flowood.flows.FlowModel`.

    Args:
        folder: an export folder written by :func:`~flowood.engines.export_flow`.
        backend: ``onnxruntime`` or ``openvino``.
        precision: ``fp32``, or ``bf16`` on OpenVINO.
        threads: intra-op threads of the engine (default: flowood's share of the cores).
        temporary: the temporary folder ``folder`` lies in, if any: kept as long as the flow, removed with it.
    """

    # capability flags of the density protocol (see flowood.flows.capabilities): an exported flowood flow
    flowood_api = exported = rebuildable = scale_latents = True
    traceable = False

    def __init__(self, folder: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                 threads: int | None = None, temporary: tempfile.TemporaryDirectory | None = None) -> None:
        super().__init__()
        self.temporary = temporary
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
        """The engine the flow runs on."""
        return self.engine.backend

    @property
    def precision(self) -> str:
        """The engine's precision, ``fp32`` or ``bf16``."""
        return self.engine.precision

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

    def dequantize(self, x: Tensor, noise: str = "uniform", generator: torch.Generator | None = None) -> Tensor:
        """The continuous float32 inputs the engine takes, on the CPU, as :meth:`FlowModel.dequantize
        <flowood.flows.FlowModel.dequantize>` (dequantized 8-bit images, or vectors)."""
        x = x.cpu()
        if self.discrete:
            return dequantize(x, noise=noise, generator=generator)
        return x.float()

    def _run(self, x: Tensor, noise: str, generator: torch.Generator | None, validate: bool
             ) -> tuple[np.ndarray, np.ndarray]:
        if validate:
            self.check_input(x)
        return self.engine.run(self.dequantize(x, noise, generator).numpy())

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
    if backend == "torch":
        return flow
    if backend not in ENGINES:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    found = capabilities(flow)
    if found.exported:
        if flow.backend != backend or flow.precision != precision:
            raise ConfigError(f"this flow is loaded on {flow.backend} in {flow.precision}, not {backend} in "
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
    return EngineFlow(folder, backend, precision, temporary=scratch)
