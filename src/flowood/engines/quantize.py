"""INT8 st-networks that keep an exported flow an exact density.

A coupling ``y_b = (x_b + t(x_a)) * exp(s(x_a))`` is a bijection with log-determinant ``sum(s)`` for *any* functions
``s`` and ``t``, and so is a masked autoregressive layer for any network whose masks keep it autoregressive. A flow
whose conditioner networks (the couplings' st-networks, MAF's MADE) compute in INT8 is therefore still an exact,
normalised density, as long as the coupling arithmetic, the log-determinants, the multi-scale split and the prior stay
in fp32 and use the one ``s`` and ``t`` the quantized network gives. Its bits/dim are the real bits/dim of a slightly
different model, not an approximation of one.

Each engine's own tool quantizes, and only the nodes the exporter places inside a conditioner network:

* ONNX Runtime (``format="onnx"``): :func:`quantize_density`, ONNX Runtime's post-training static quantization in
  QDQ format (weights INT8 per output channel, activations UINT8 per tensor, ranges at the 99.999th percentile of
  in-distribution inputs). The quantizer gives every consumer of a tensor it quantizes the quantized copy, so a
  tensor the conditioner reads from the flow (``x_a``, MAF's input) is given back in fp32 to the flow's own nodes
  (:func:`rewire_to_fp32`, checked by :func:`fp32_leaks`).
* OpenVINO (``format="openvino"``): :func:`quantize_openvino`, NNCF's post-training quantization of the OpenVINO
  model (each weight the graph computes from constants, MADE's masked weights and weight-normalised convolutions,
  replaced first by the constant it computes, so that NNCF quantizes it), every
  operation outside the conditioners in its ignored scope, checked by :func:`ov_fp32_leaks` (no INT8 value reaches
  the flow) and :func:`ov_fp32_weights` (no quantized input meets an fp32 weight).

INT8 pays only on CPUs with INT8 dot-product instructions (x86 VNNI or AMX, Arm's dot product); elsewhere ONNX
Runtime's UINT8 x INT8 products can saturate. :func:`~flowood.engines.common.check_int8_cpu` refuses such a CPU
before an INT8 export is made or scored.

References:
    Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017 (any s and t keep the coupling
    invertible with log-determinant sum(s)). Jacob et al. Quantization and training of neural networks for efficient
    integer-arithmetic-only inference. CVPR 2018 (per-channel weight and per-tensor activation quantization).
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from flowood.engines.common import ExportError, check_int8_cpu, int8_dot_product, require_module
from flowood.options import ConfigError

#: the CPU checks are common's (EngineDensity needs them too), named here where INT8 is explained
__all__ = ["QUANTIZED_OPS", "OV_QUANTIZED_TYPES", "conditioner_scopes", "conditioner_nodes", "quantize_density",
           "rewire_to_fp32", "fp32_leaks", "quantize_openvino", "ov_fp32_leaks", "ov_fp32_weights", "int8_dot_product",
           "check_int8_cpu"]

_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
#: the operators quantized inside a conditioner: the multiply-adds, and ReLU so that a convolution's INT8 output feeds
#: the next one (ONNX Runtime then fuses them into QLinearConv/QLinearMatMul). Residual sums and normalisations stay
#: fp32: quantizing them too doubled the bits/dim shift of the demo's RealNVP (0.091 against 0.051).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "Relu")
#: the OpenVINO operations NNCF quantizes inside a conditioner: the multiply-adds only. Letting it quantize the inputs
#: of residual sums and normalisations too moved a fitted RealNVP's AUROC by 0.020 (0.0008 with these alone).
OV_QUANTIZED_TYPES = ("Convolution", "GroupConvolution", "MatMul")


def conditioner_scopes(model: nn.Module) -> list[str]:
    """The module paths, within ``model``, of every conditioner network: the submodule a flow layer names in its
    ``conditioner`` attribute (a coupling's ``st_net``, MAF's ``made``).

    Raises:
        ConfigError: the model has none (nothing would be quantized).
    """
    scopes = [f"{name}.{layer.conditioner}" for name, layer in model.named_modules()
              if getattr(layer, "conditioner", None)]
    if not scopes:
        raise ConfigError("this flow has no coupling or autoregressive networks to quantize")
    return scopes


def _scopes_of(node: Any) -> list[str]:
    """The module paths a node of a graph from PyTorch's ONNX exporter was made in (empty when unrecorded)."""
    for prop in node.metadata_props:
        if prop.key == _NAME_SCOPES:
            try:
                return list(ast.literal_eval(prop.value))
            except (ValueError, SyntaxError):
                return []
    return []


def conditioner_nodes(graph: Any, scopes: Iterable[str]) -> set[str]:
    """Names of the nodes of an exported ONNX graph (``onnx.ModelProto``) made inside one of ``scopes``.

    Raises:
        ExportError: the graph records no module paths (not written by flowood's exporter), or none lies inside.
    """
    wanted = set(scopes)
    inside = {node.name for node in graph.graph.node if wanted.intersection(_scopes_of(node))}
    if not inside:
        raise ExportError("the exported graph records no nodes inside the flow's st-networks; export it again with "
                          "this flowood")
    return inside


class _Batches:
    """ONNX Runtime's calibration reader over an array fed to the graph's input ``name``, in batches of one size (its
    histogram calibrators stack the batches): a last, partial batch is filled up with the first inputs."""

    def __init__(self, x: np.ndarray, batch: int, name: str) -> None:
        batch = min(batch, len(x))
        x = np.concatenate([x, x[:-len(x) % batch]]) if len(x) % batch else x
        self._batches = iter([{name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_density(onnx_path: str | Path, out_path: str | Path, scopes: Iterable[str], calibration: np.ndarray,
                     batch: int = 64, op_types: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Quantize the nodes made inside ``scopes`` (a flow's conditioner networks; for a detector also its feature
    extractor) of the graph ``onnx_path`` into ``out_path`` (QDQ, see the module docstring), calibrated on
    ``calibration`` (in-distribution inputs of the graph, in its input's dtype). ``op_types`` narrows, for some of
    the scopes, the operators quantized there (elsewhere :data:`QUANTIZED_OPS`); the others in it stay fp32.

    Returns:
        what the manifest records: the method, the nodes quantized, the flow's edges kept in fp32.

    Raises:
        ExportError: ONNX Runtime could not quantize the graph, or the result would feed INT8 values into the flow.
    """
    onnx = require_module("onnx")
    quantization = require_module("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(onnx_path))
    inside = conditioner_nodes(graph, scopes)
    for scope, types in (op_types or {}).items():
        inside -= {n.name for n in graph.graph.node if scope in _scopes_of(n) and n.op_type not in types}
    with tempfile.TemporaryDirectory(prefix="flowood-quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        try:  # constant folding (weight norm, masks) first, so every weight is a constant the quantizer can see
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
            with contextlib.redirect_stdout(io.StringIO()):  # its calibrator prints its progress
                quantization.quantize_static(
                    str(prepared), str(quantized), _Batches(calibration, batch, graph.graph.input[0].name),
                    quant_format=quantization.QuantFormat.QDQ, nodes_to_quantize=sorted(inside),
                    op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                    activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.Percentile)
        except Exception as err:
            raise ExportError(f"ONNX Runtime could not quantize the graph: {str(err).splitlines()[0]}") from err
        model = onnx.load(str(quantized))
    rewired = rewire_to_fp32(model, inside)
    leaks = fp32_leaks(model, inside)
    if leaks:  # pragma: no cover - rewire_to_fp32 removes every one; a guard against a quantizer that changes
        raise ExportError(f"the quantized graph feeds INT8 values into the flow at {', '.join(leaks[:3])}; nothing "
                          "was kept")
    onnx.save(model, str(out_path))
    producers = _producers(model)
    int8_ops = sorted({n.op_type for n in model.graph.node if n.name in inside and n.op_type in QUANTIZED_OPS
                       and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                               for i in n.input)})
    return {"engine": "onnxruntime", "method": "ONNX Runtime static quantization, QDQ format",
            "graph": "model.onnx", "int8_ops": int8_ops,
            "quantized_tensors": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
            "weights": "int8, per output channel", "activations": "uint8, per tensor",
            "calibration_method": "percentile 99.999", "flow_edges_kept_fp32": rewired}


def _producers(model: Any) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def _fp32_source(producers: dict[str, Any], tensor: str, inside: set[str]) -> str | None:
    """For a tensor a DequantizeLinear gives, the fp32 tensor it was quantized from when that tensor comes from the
    flow (outside every conditioner network); None for a conditioner's own output, or any other tensor."""
    dq = producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None  # a weight (a constant) or an INT8 constant
    source = producers.get(q.input[0])
    return q.input[0] if source is None or source.name not in inside else None


def _flow_nodes(model: Any, inside: set[str]) -> list[Any]:
    return [n for n in model.graph.node if n.name not in inside
            and n.op_type not in ("QuantizeLinear", "DequantizeLinear")]


def rewire_to_fp32(model: Any, inside: set[str]) -> int:
    """Make every node of the flow (outside the conditioner networks ``inside``) read the fp32 tensor where the
    quantizer gave it a quantized-dequantized copy (the quantizer rewires every consumer of a tensor it quantizes);
    the conditioners keep their quantized inputs. In place; the number of inputs rewired."""
    producers = _producers(model)
    rewired = 0
    for node in _flow_nodes(model, inside):
        for i, name in enumerate(node.input):
            source = _fp32_source(producers, name, inside)
            if source is not None:
                node.input[i] = source
                rewired += 1
    return rewired


def fp32_leaks(model: Any, inside: set[str]) -> list[str]:
    """Nodes of the flow (outside the conditioner networks) that read a quantized copy of a flow tensor: what would
    make the quantized graph something other than an exact density. Empty for a graph from :func:`quantize_density`.
    """
    producers = _producers(model)
    return [node.name for node in _flow_nodes(model, inside)
            if any(_fp32_source(producers, name, inside) is not None for name in node.input)]


def _ov_inside(op: Any, producers: dict[str, str], inside: set[str]) -> bool:
    """Whether an OpenVINO operation converted from the ONNX graph comes from a node inside a conditioner network
    (by its output tensors' names, which the conversion keeps, or its own name); an operation that cannot be traced
    back counts as the flow's, so it stays fp32."""
    names = [name for out in op.outputs() for name in out.get_names()]
    own = op.get_friendly_name()
    # an ONNX node converted to several operations names them NODE/PART (a convolution with a bias: NODE/WithoutBiases)
    return own in inside or own.split("/")[0] in inside or any(producers.get(name) in inside for name in names)


def quantize_openvino(onnx_path: str | Path, xml_path: str | Path, scopes: Iterable[str], calibration: np.ndarray,
                      batch: int = 64) -> dict[str, Any]:
    """OpenVINO's INT8 model of the density graph ``onnx_path``, written to ``xml_path`` (and its ``.bin``): NNCF's
    post-training quantization (FakeQuantize operations, preset ``performance``: symmetric weights and activations)
    of the multiply-adds converted from the conditioner networks (:data:`OV_QUANTIZED_TYPES`), every other operation
    in NNCF's ignored scope.

    Returns:
        what the manifest records (the method, the operations quantized).

    Raises:
        ExportError: NNCF could not quantize the model, or the result would feed INT8 values into the flow.
    """
    onnx, ov, nncf = (require_module(m) for m in ("onnx", "openvino", "nncf"))
    graph = onnx.load(str(onnx_path))
    inside = conditioner_nodes(graph, scopes)
    producers = {out: node.name for node in graph.graph.node for out in node.output}
    model = _folded(ov.Core().read_model(str(onnx_path)))
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in ("Parameter", "Result", "Constant")]
    inside_ops = {op.get_friendly_name() for op in ops if _ov_inside(op, producers, inside)}
    outside = [op.get_friendly_name() for op in ops if op.get_friendly_name() not in inside_ops]
    other_types = sorted({op.get_type_name() for op in ops} - set(OV_QUANTIZED_TYPES))
    x = calibration
    try:
        with _quiet(nncf):
            quantized = nncf.quantize(model, nncf.Dataset([x[i:i + batch] for i in range(0, len(x), batch)]),
                                      preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(x),
                                      ignored_scope=nncf.IgnoredScope(names=outside, types=other_types,
                                                                      validate=False))
    except Exception as err:
        raise ExportError(f"NNCF could not quantize the model: {str(err).splitlines()[0]}") from err
    leaks = ov_fp32_leaks(quantized, inside_ops)
    if leaks:
        raise ExportError(f"the quantized model feeds INT8 values into the flow at {', '.join(leaks[:3])}; nothing "
                          "was kept")
    unquantized = ov_fp32_weights(quantized)
    if unquantized:
        raise ExportError(f"NNCF left the weights of {', '.join(unquantized[:3])} in fp32 (OpenVINO would run them in "
                          "fp32); nothing was kept")
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    fake = [op for op in quantized.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    int8_ops = sorted({target.get_node().get_type_name() for op in fake for target in op.output(0).get_target_inputs()
                       if target.get_node().get_friendly_name() in inside_ops})
    return {"engine": "openvino", "method": "NNCF post-training quantization, preset performance",
            "graph": "model.xml", "int8_ops": int8_ops, "quantized_tensors": len(fake),
            "weights": "int8, per output channel", "activations": "int8 or uint8, per tensor",
            "calibration_method": "NNCF's min-max with bias correction"}


def ov_fp32_weights(model: Any) -> list[str]:
    """The multiply-adds of an NNCF-quantized OpenVINO model whose input is quantized but whose weight is not (not
    an INT8 constant, nor a FakeQuantize): OpenVINO runs such an operation in fp32. Empty for a model from
    :func:`quantize_openvino`."""
    missing = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in OV_QUANTIZED_TYPES:
            continue
        sources = [port.get_source_output().get_node() for port in op.inputs()]
        if sources[0].get_type_name() == "FakeQuantize" and not _int8_weight(sources[1]):
            missing.append(op.get_friendly_name())
    return missing


def _int8_weight(node: Any) -> bool:
    """Whether ``node`` gives a quantized weight: a FakeQuantize, or an INT8 constant decompressed by Convert,
    Subtract (zero point) and Multiply (scale), the form NNCF writes."""
    while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape"):
        node = node.input(0).get_source_output().get_node()
    return node.get_type_name() == "FakeQuantize" or (
        node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8"))


def _folded(model: Any) -> Any:
    """``model`` with each multiply-add's weight that the graph computes from constants alone (a weight-normalised
    convolution's ``g * v / |v|``, a MADE layer's ``weight * mask``) replaced by the one constant it computes, in
    fp32; NNCF quantizes only constant weights, and OpenVINO runs a layer whose weight it left in fp32 in fp32.
    Nothing else in the model changes."""
    ov = require_module("openvino")
    core = ov.Core()
    for op in model.get_ordered_ops():
        if op.get_type_name() not in OV_QUANTIZED_TYPES:
            continue
        weight = op.input(1).get_source_output()
        if weight.get_node().get_type_name() == "Constant" or not _constant_only(weight.get_node()):
            continue
        computed = core.compile_model(ov.Model([weight], []), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({})
        op.input(1).replace_source_output(ov.opset13.constant(next(iter(computed.values()))).output(0))
    model.validate_nodes_and_infer_types()
    return model


def _constant_only(node: Any) -> bool:
    """Whether ``node``'s value depends on constants alone (no input of the model upstream)."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.get_type_name() == "Parameter":
            return False
        stack += [port.get_source_output().get_node() for port in current.inputs()]
    return True


def ov_fp32_leaks(model: Any, inside_ops: set[str]) -> list[str]:
    """OpenVINO operations of the flow (outside the quantized networks ``inside_ops``, by name) that read a
    FakeQuantize's copy of a tensor the flow computes (as :func:`fp32_leaks` for ONNX Runtime: a quantized network's
    own output may be read quantized, as one value, by the flow): empty for a model from :func:`quantize_openvino`."""
    leaks = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize" or _ov_computed_inside(op.input(0).get_source_output().get_node(),
                                                                        inside_ops):
            continue
        for target in op.output(0).get_target_inputs():
            node = target.get_node()
            if node.get_friendly_name() not in inside_ops and node.get_type_name() not in ("FakeQuantize", "Convert"):
                leaks.append(node.get_friendly_name())
    return leaks


def _ov_computed_inside(node: Any, inside_ops: set[str]) -> bool:
    """Whether ``node`` (a FakeQuantize's input) is an operation of a quantized network, looking through the
    conversions NNCF or OpenVINO put between them."""
    while node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    return node.get_friendly_name() in inside_ops


@contextlib.contextmanager
def _quiet(nncf: Any) -> Iterator[None]:
    """NNCF's progress bars and notices off (flowood reports what the quantization did itself)."""
    level = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.getLogger("nncf").setLevel(level)
