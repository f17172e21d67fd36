"""What exporting a graph and scoring it on an inference engine share.

The export folder's format (``flowood-export.json``, its version and fields), the options of an export with the
tolerances its parity check holds it to, the optional engine packages, and an exported graph compiled on an engine
(:class:`EngineDensity`), which the parity check runs at export and the engine backends run when scoring.
:mod:`flowood.engines.export` (a flow's export), :mod:`flowood.engines.backend` (a flow scored on an engine) and
:mod:`flowood.deploy.export` (a whole detector's export) stand on this module; it imports none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowood.errors import FlowoodError
from flowood.options import ConfigError, option
from flowood.runtime import cpu_flags, data_root_option, seed_option

__all__ = ["ENGINES", "ENGINE_PRECISIONS", "EXPORT_FORMATS", "QUANTIZATIONS", "DEFAULT_MAX_BPD_SHIFT",
           "DEFAULT_MAX_AUROC_SHIFT", "DEFAULT_MAX_SCORE_SHIFT", "EXPORT_MANIFEST", "EXPORT_FORMAT_VERSION",
           "DEFAULT_TOLERANCE", "DEFAULT_SCORE_TOLERANCE", "ExportError", "ExportOptions", "check_export_options",
           "engines_for", "require_module", "read_manifest", "EngineDensity", "int8_dot_product", "check_int8_cpu"]

#: the inference engines an exported graph runs on.
ENGINES = ("onnxruntime", "openvino")
#: engine precisions: fp32 everywhere; bf16 on OpenVINO where the CPU has bf16 instructions.
ENGINE_PRECISIONS = ("fp32", "bf16")
#: the formats ``flowood export`` writes.
EXPORT_FORMATS = ("onnx", "openvino")
#: the file in an export folder that describes the graph and its parity check.
EXPORT_MANIFEST = "flowood-export.json"
#: the version of the export folder's format, the manifest's ``format`` field.
EXPORT_FORMAT_VERSION = "flowood-export-1"
#: the largest difference of log-likelihood (bits/dim) between the engine and PyTorch an export may have.
DEFAULT_TOLERANCE = 1e-4
#: what ``flowood export --quantize`` offers: the graph as trained, or its st-networks in INT8.
QUANTIZATIONS = ("none", "int8")
#: the largest |mean bits/dim shift| from fp32, on held-out in-distribution data, an INT8 export may have.
DEFAULT_MAX_BPD_SHIFT = 0.05
#: the largest |AUROC shift| from fp32, on any OOD set, an INT8 export may have.
DEFAULT_MAX_AUROC_SHIFT = 0.005
#: the largest |mean anomaly-score shift| from fp32, on held-out in-distribution data, an INT8 detector export may
#: have, as a share of the spread of the detector's calibration scores.
DEFAULT_MAX_SCORE_SHIFT = 0.05
#: the largest difference of a detector's anomaly score between the engine and PyTorch an export may have, as a share
#: of the spread of the detector's in-distribution calibration scores.
DEFAULT_SCORE_TOLERANCE = 1e-3
#: CPU flags (Linux /proc/cpuinfo) of INT8 dot-product instructions.
_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
_INSTALL = {"onnx": "export", "onnxscript": "export", "onnxruntime": "onnxruntime", "openvino": "openvino",
            "onnxruntime.quantization": "onnxruntime", "nncf": "openvino",
            "litserve": "serve"}


class ExportError(FlowoodError, RuntimeError):
    """A flow that could not be exported, or whose exported graph disagrees with PyTorch beyond the tolerance."""


def require_module(name: str) -> Any:
    """Import an optional engine package, or say which extra installs it.

    Raises:
        ConfigError: the package is not installed (the message names the extra).
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"this needs the `{name}` package: pip install 'flowood[{_INSTALL.get(name, name)}]'") \
            from err


@dataclass
class ExportOptions:
    """How :func:`~flowood.engines.export_flow` (and :func:`~flowood.deploy.export.export_detector`) export: every
    field is an option (``flowood export --help`` shows them)."""

    format: str = option("onnx", "onnx (model.onnx, for ONNX Runtime and OpenVINO) or openvino (also OpenVINO's "
                         "model.xml/model.bin)", choices=EXPORT_FORMATS)
    tolerance: float = option(DEFAULT_TOLERANCE, "a flow's largest |log-likelihood difference| from PyTorch, in "
                              "bits/dim, an export may have (above it the export is refused)", minimum=0.0)
    score_tolerance: float = option(DEFAULT_SCORE_TOLERANCE, "a detector's largest |anomaly-score difference| from "
                                    "PyTorch on in-distribution images, as a share of the spread (standard deviation) "
                                    "of its calibration scores (above it the export is refused)", minimum=0.0)
    check_samples: int = option(16, "inputs of the parity check (samples of the flow and noise; for a detector, noise "
                                "images beside the in-distribution images its file keeps)", minimum=4)
    seed: int = seed_option()
    quantize: str = option("none", "none, or int8: the st-networks (MAF's MADE) in INT8, calibrated on in-distribution "
                           "training inputs; couplings, log-determinants and the prior stay fp32, so the export is "
                           "still an exact density; for a detector also its feature extractor. Checked against fp32 "
                           "on held-out and OOD data, refused beyond max_bpd_shift (a detector: max_score_shift) or "
                           "max_auroc_shift", choices=QUANTIZATIONS)
    calibration: int = option(1000, "in-distribution training inputs the INT8 activation ranges are calibrated on "
                              "(the demo's RealNVP moved 0.051 bits/dim with 256, 0.031 with 1000)", minimum=1)
    check_ood: list[str] = option(default_factory=list, help="OOD data sets the INT8 check measures the AUROC on "
                                  "(a flow's default: the checkpoint's monitor_ood)")
    check_held_out: int = option(1000, "held-out in-distribution inputs, and inputs of each OOD set, the INT8 check "
                                 "scores", minimum=10)
    max_bpd_shift: float = option(DEFAULT_MAX_BPD_SHIFT, "the largest |mean bits/dim shift| from fp32, on held-out "
                                  "in-distribution data, an INT8 export may have", minimum=0.0)
    max_score_shift: float = option(DEFAULT_MAX_SCORE_SHIFT, "a detector's largest |mean anomaly-score shift| from "
                                    "fp32, on held-out in-distribution images, as a share of the spread of its "
                                    "calibration scores, an INT8 export may have", minimum=0.0)
    max_auroc_shift: float = option(DEFAULT_MAX_AUROC_SHIFT, "the largest |AUROC shift| from fp32, on any OOD set, an "
                                    "INT8 export may have", minimum=0.0)
    dataset: str | None = option(None, "in-distribution data set of the INT8 calibration and check (default: the "
                                 "checkpoint's, or the one the detector was fitted on)")
    data_root: str | None = data_root_option()


#: options that only an INT8 export reads, with their defaults.
_INT8_ONLY = ("calibration", "check_ood", "check_held_out", "max_bpd_shift", "max_score_shift", "max_auroc_shift",
              "dataset", "data_root")
#: the INT8 check's in-distribution tolerance of each kind of export: a flow's bits/dim, or a detector's score.
_SHIFTS = {"flow": "max_bpd_shift", "detector": "max_score_shift"}


#: which tolerance holds each kind of export to PyTorch: a flow's log-likelihood, or a detector's score.
_TOLERANCES = {"flow": ("tolerance", DEFAULT_TOLERANCE, "bits/dim"),
               "detector": ("score_tolerance", DEFAULT_SCORE_TOLERANCE, "a share of the calibration scores' spread")}


def check_export_options(o: ExportOptions, kind: str) -> ExportOptions:
    """Refuse, before any work, an unknown format, missing packages, and a tolerance of the other kind of export
    (a flow is held to ``tolerance``, a detector to ``score_tolerance``).

    Raises:
        ConfigError: named in the message.
    """
    if o.format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {o.format!r}; choose {' or '.join(EXPORT_FORMATS)}")
    (name, _, unit), (other, default, _) = (_TOLERANCES[kind], *[v for k, v in _TOLERANCES.items() if k != kind])
    if getattr(o, other) != default:
        raise ConfigError(f"`{other}` applies to exporting a {'detector' if kind == 'flow' else 'flow'}; a {kind}'s "
                          f"parity is held to `{name}` ({unit})")
    if not getattr(o, name) > 0:
        raise ConfigError(f"{name} must be positive, got {getattr(o, name)}")
    _check_quantize_options(o, kind)
    for module in ("onnx", "onnxscript", "openvino" if o.format == "openvino" else "onnxruntime"):
        require_module(module)
    return o


def _check_quantize_options(o: ExportOptions, kind: str) -> None:
    """Refuse an unknown quantization, INT8 options without ``quantize='int8'``, and the other kind's shift tolerance
    (a flow's check holds bits/dim to ``max_bpd_shift``, a detector's its score to ``max_score_shift``)."""
    if o.quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {o.quantize!r}; choose {' or '.join(QUANTIZATIONS)}")
    defaults = ExportOptions()
    other = next(v for k, v in _SHIFTS.items() if k != kind)
    if getattr(o, other) != getattr(defaults, other):
        raise ConfigError(f"`{other}` applies to the INT8 check of a {'detector' if kind == 'flow' else 'flow'}; a "
                          f"{kind}'s is held to `{_SHIFTS[kind]}`")
    stray = [k for k in _INT8_ONLY if getattr(o, k) != getattr(defaults, k)]
    if o.quantize != "int8" and stray:
        raise ConfigError(f"{', '.join(stray)} apply to an INT8 export only; add quantize='int8'")
    if o.quantize == "int8":
        require_module("onnxruntime.quantization" if o.format == "onnx" else "nncf")


def int8_dot_product() -> bool | None:
    """Whether this CPU has INT8 dot-product instructions (x86 VNNI or AMX, Arm's dot product): None where the
    flags cannot be read (not Linux)."""
    flags = cpu_flags()
    return None if flags is None else any(flag in flags for flag in _INT8_FLAGS)


def check_int8_cpu() -> None:
    """Refuse INT8 on a CPU without INT8 dot-product instructions (there ONNX Runtime's UINT8 x INT8 products can
    saturate, and INT8 is no faster than fp32).

    Raises:
        ConfigError: the CPU lacks them.
    """
    if int8_dot_product() is False:
        raise ConfigError("this CPU has no INT8 dot-product instructions (VNNI, AMX or Arm's dot product): INT8 would "
                          "be slower than fp32 and its products can saturate; export and score in fp32 "
                          "(quantize='none')")


def _check_int8_engine(manifest: dict[str, Any], backend: str) -> None:
    """Refuse an INT8 export on a CPU without INT8 dot-product instructions, or on an engine its check did not run on
    (the engines read a quantized graph differently: each is held to the tolerances only where it was checked)."""
    check_int8_cpu()
    checked = (manifest.get("quantization") or {}).get("check", {}).get("engines", [])
    if backend not in checked:
        raise ConfigError(f"this INT8 export was checked against fp32 on {', '.join(checked) or 'no engine'}, not on "
                          f"{backend}; export it with format={'openvino' if backend == 'openvino' else 'onnx'} to "
                          f"score it on {backend}")


def engines_for(format: str) -> list[str]:
    """The engines the parity check runs on: the format's own, and every other installed engine that reads the
    folder (OpenVINO reads model.onnx, ONNX Runtime reads an openvino export's model.onnx)."""
    own = "openvino" if format == "openvino" else "onnxruntime"
    others = [e for e in ENGINES if e != own and importlib.util.find_spec(e) is not None]
    return [own, *others]


_MANIFEST_KEYS = {"flow": ("input_shape", "discrete", "scale_dims", "flow_config", "parity"),
                  "detector": ("input", "input_shape", "outputs", "score", "threshold", "fpr", "reference_scores",
                               "parity")}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``flowood-export.json`` of an export folder, checked.

    Raises:
        ConfigError: no such file, unreadable, from another program or version, or missing fields.
    """
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


def _threads() -> int:
    return max(1, torch.get_num_threads())  # flowood's share of the cores (see flowood.runtime.CoreShare)


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
        self.folder = Path(folder)
        if backend not in ENGINES:
            raise ConfigError(f"unknown engine {backend!r}; choose {' or '.join(ENGINES)}")
        if precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"unknown engine precision {precision!r}; choose {' or '.join(ENGINE_PRECISIONS)}")
        self.manifest = manifest if manifest is not None else read_manifest(self.folder)
        if self.manifest.get("precision") == "int8":
            _check_int8_engine(self.manifest, backend)
        self.backend, self.precision = backend, precision
        threads = threads or _threads()
        onnx_path = self.folder / "model.onnx"
        if not onnx_path.is_file() and not (backend == "openvino" and (self.folder / "model.xml").is_file()):
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

    def run_batches(self, x: np.ndarray, batch: int) -> np.ndarray:
        """The graph's first output (a flow's ``log_prob``, a detector's ``score``) for inputs of any number, in
        batches of ``batch``, as float64; empty for no inputs."""
        parts = [self.run(x[i:i + batch])[0] for i in range(0, len(x), batch)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
