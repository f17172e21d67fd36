"""Where the time of scoring goes: flowood's density pass in PyTorch against its exported graph on ONNX Runtime.

Usage::

    .venv/bin/python benchmarks/engine_profile.py [--cases glow-1x28x28 realnvp-1x28x28] [--batch 1024] \
        [--int8 [--engine onnxruntime|openvino]]

For each case (the models of ``benchmarks/compare.py``, initialised on the FashionMNIST fixture, not trained: the
time does not depend on the weights; for ``detector-resnet18-3x32x32``, compare.py's pipeline detector, its trained
ResNet-18 and Mahalanobis, scoring uint8 images), the log-likelihood (or score) of one batch is profiled in PyTorch
(``torch.profiler``, channels-last, ``inference_mode``; self time per operator) and on ONNX Runtime (its own
profiler; time per node, by operator type), after a warm-up pass. It prints the wall time per batch of each, and the
operators that take most of it, so a speed-up (or its absence) is explained by where the time goes: convolutions,
which no engine makes much faster than oneDNN does for PyTorch, or the many small element-wise operations of
couplings, which an engine fuses. With ``--int8`` the graph is also exported with its st-networks (a detector's
backbone) in INT8 (the calibration and check sets of ``compare.py``'s INT8 rows) and profiled beside the fp32 graph,
on ONNX Runtime or, with ``--engine openvino``, on OpenVINO (its performance counters: time per executed node, by
node type).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the benchmark's models and data
from compare import CASES, data, detector_images, detector_pipeline, flowood_model, int8_options


def torch_profile(score, x: torch.Tensor) -> tuple[float, list[tuple[str, float]]]:
    """Seconds per batch of ``score(x)``, and (operator, share of the profiled self time) sorted by share."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        score(x)
        start = time.perf_counter()
        score(x)
        seconds = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            score(x)
    self_us = collections.Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()})
    total = sum(self_us.values())
    return seconds, [(op, us / total) for op, us in self_us.most_common()]


def export_graph(model, x: torch.Tensor, folder: Path, fmt: str, int8: bool) -> np.ndarray:
    """Export ``model`` (a flow, with flowood.engines.export_flow, or a pipeline detector, with
    flowood.deploy.export.export_detector) into ``folder`` in format ``fmt``, with ``int8`` its st-networks (or the
    detector's backbone) in INT8 with ``compare.py``'s calibration and check sets; returns the graph's input for
    ``x`` (a flow's dequantized images or vectors, a detector's uint8 images)."""
    from flowood.deploy import DetectorPipeline
    from flowood.deploy.export import export_detector
    from flowood.engines import export_flow
    from flowood.flows.preprocessing import dequantize

    if isinstance(model, DetectorPipeline):
        extra = int8_options("detector", tuple(model.input_shape), folder.parent) if int8 else {}
        export_detector(model, folder, format=fmt, **extra)
        return x.numpy()
    kind = "maf" if not model.discrete else "image"
    extra = int8_options(kind, tuple(model.input_shape), folder.parent) if int8 else {}
    export_flow(model, folder, format=fmt, **extra)
    return dequantize(x, "uniform", torch.Generator().manual_seed(0)).numpy() if model.discrete else x.numpy()


def onnxruntime_profile(model, x: torch.Tensor, int8: bool = False) -> tuple[float, list[tuple[str, float]]]:
    """The same on ONNX Runtime: ``model`` exported (:func:`export_graph`), profiled per node."""
    import onnxruntime as ort

    scratch = tempfile.TemporaryDirectory(prefix="flowood-profile-")
    folder = Path(scratch.name) / "export"
    y = export_graph(model, x, folder, "onnx", int8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: y}
    session.run(None, feed)
    start = time.perf_counter()
    session.run(None, feed)
    seconds = time.perf_counter() - start
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort-profile")
    profiled = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    profiled.run(None, feed)
    profiled.run(None, feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= last_start:
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(per_op.values()) or 1
    scratch.cleanup()  # the export and ONNX Runtime's profile files
    return seconds, [(op, us / total) for op, us in per_op.most_common()]


def openvino_profile(model, x: torch.Tensor, int8: bool = False) -> tuple[float, list[tuple[str, float]]]:
    """The same on OpenVINO: ``model`` exported in OpenVINO's format (:func:`export_graph`; INT8 by NNCF), timed,
    then profiled with OpenVINO's performance counters (the executed nodes' real time, by type)."""
    import openvino as ov

    scratch = tempfile.TemporaryDirectory(prefix="flowood-profile-")
    folder = Path(scratch.name) / "export"
    y = export_graph(model, x, folder, "openvino", int8)
    core = ov.Core()
    threads = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(str(folder / "model.xml"), "CPU", threads)
    compiled(y)
    start = time.perf_counter()
    compiled(y)
    seconds = time.perf_counter() - start
    profiled = core.compile_model(str(folder / "model.xml"), "CPU", {**threads, "PERF_COUNT": True})
    request = profiled.create_infer_request()
    request.infer({0: y})
    request.infer({0: y})
    per_op: collections.Counter = collections.Counter()
    for info in request.profiling_info:
        if info.status == info.Status.EXECUTED:
            per_op[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds()
    total = sum(per_op.values()) or 1
    scratch.cleanup()
    return seconds, [(op, t / total) for op, t in per_op.most_common()]


def profiled_model(case: str, batch: int):
    """``(model, one batch of inputs, the PyTorch scoring function)`` of ``case``: compare.py's flow, initialised
    on the FashionMNIST fixture (channels-last, evaluation mode), or its pipeline detector."""
    kind, shape, _ = CASES[case]
    torch.manual_seed(0)
    if kind == "detector":
        pipeline = detector_pipeline(shape)
        return pipeline, detector_images(shape, batch), pipeline.anomaly_score
    flow = flowood_model(kind, shape)
    x = data(kind, shape, batch)
    with torch.no_grad():
        flow.log_prob(x[:64])  # ActNorm's data-dependent start
    flow.eval().optimize(channels_last=True)
    return flow, x, lambda batch_x: flow.log_prob(batch_x, validate=False)


ENGINE_PROFILES = {"onnxruntime": onnxruntime_profile, "openvino": openvino_profile}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["glow-1x28x28", "realnvp-1x28x28"],
                        choices=list(CASES))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--int8", action="store_true", help="also profile the graph with INT8 st-networks")
    parser.add_argument("--engine", choices=sorted(ENGINE_PROFILES), default="onnxruntime",
                        help="the engine of the INT8 comparison (default: onnxruntime)")
    args = parser.parse_args()
    from flowood.allocator import tune_allocator

    tune_allocator(enabled=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}")
    for case in args.cases:
        model, x, score = profiled_model(case, args.batch)
        t_torch, ops_torch = torch_profile(score, x)
        t_ort, ops_ort = onnxruntime_profile(model, x)
        print(f"\n{case}: PyTorch {t_torch * 1e3:.0f} ms per batch, ONNX Runtime {t_ort * 1e3:.0f} ms "
              f"({t_torch / t_ort:.2f}x)")
        print("| PyTorch operator | share | ONNX Runtime operator | share |")
        print("|---|---:|---|---:|")
        for i in range(args.top):
            a = ops_torch[i] if i < len(ops_torch) else ("", 0.0)
            b = ops_ort[i] if i < len(ops_ort) else ("", 0.0)
            print(f"| {a[0]} | {a[1]:.0%} | {b[0]} | {b[1]:.0%} |")
        if args.int8:
            profile = ENGINE_PROFILES[args.engine]
            t_fp32, ops_fp32 = (t_ort, ops_ort) if args.engine == "onnxruntime" else profile(model, x)
            t_int8, ops_int8 = profile(model, x, int8=True)
            print(f"\n{case}: {args.engine} fp32 {t_fp32 * 1e3:.0f} ms per batch, INT8 "
                  f"{t_int8 * 1e3:.0f} ms ({t_fp32 / t_int8:.2f}x)")
            print(f"| {args.engine} fp32 operator | share | INT8 operator | share |")
            print("|---|---:|---|---:|")
            for i in range(args.top):
                a = ops_fp32[i] if i < len(ops_fp32) else ("", 0.0)
                b = ops_int8[i] if i < len(ops_int8) else ("", 0.0)
                print(f"| {a[0]} | {a[1]:.0%} | {b[0]} | {b[1]:.0%} |")

if __name__ == "__main__":
    main()
