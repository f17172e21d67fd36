"""flowood against the libraries users would pick instead, same architecture, same machine, same run.

Usage (peers are installed into their own environment by ``make bench-setup``)::

    .venv-bench/bin/python benchmarks/compare.py [--device cpu|cuda] [--steps 20] [--repeats 3]
        [--cases glow-1x28x28 ...]

Cases:
    glow-1x28x28, glow-3x32x32        Glow, 2 levels of 8 steps (ActNorm, LU 1x1 conv, affine coupling with a
                                      3x3-1x1-3x3 conv net of 64 channels): flowood vs normflows (GlowBlock)
    realnvp-1x28x28, realnvp-3x32x32  2-scale RealNVP (3 checkerboard, squeeze, 3 channel couplings, split, 4
                                      checkerboard), same conv nets, widths doubled after the squeeze:
                                      flowood vs normflows (AffineCouplingBlock)
    maf-1792                          MAF on 1792-dim vectors (the paper's EfficientNet features), 5 layers of
                                      MADE with two hidden layers of 512: flowood vs nflows and zuko
    detector-resnet18-3x32x32         a pipeline detector, uint8 images -> ResNet-18 features -> Mahalanobis
                                      (scoring only; the ResNet-18 trained a few epochs on the fixture's labels):
                                      pytorch-ood on the torch model vs flowood's pipeline in PyTorch and its
                                      whole-detector export on each engine, fp32 and INT8 (backbone in INT8, see
                                      ``detector_pipeline``)

flowood runs as it is by default (``flowood``), with channels-last convolutions (``flowood-cl``,
``FlowModel.optimize()``; what ``flowood evaluate`` uses), and with channels-last plus ``torch.compile``
(``flowood-compile``; compilation happens in the warm-up steps, outside the timing). A ``+malloc`` row runs
with glibc's allocator told to keep freed memory (``flowood.allocator.tune_allocator``, which the ``flowood``
command line applies at start); every peer is measured both ways too. A ``-bf16`` row runs training and scoring
under ``torch.autocast(dtype=torch.bfloat16)``: flowood narrows it to its st-networks (log-determinants in fp32,
``FlowModel.mixed_precision``), a peer runs wholly under it, as a user would run it. Each flowood row is compared
with the best peer row of the same precision (fp32 or bf16); a table of its own sets flowood's bf16 rows, which
are what ``flowood train`` runs on a CPU with native BF16 (its default precision ``auto``), against the best peer
in fp32, the peers' default. ``flowood-compile-bf16`` is both. A ``-packed`` row is flowood's RealNVP with
``mask="checkerboard_packed"``: its checkerboard couplings gather each half into a half-width tensor as
normflows' do (same parameters, half the convolution work; a different model from the paper's masked one).
A ``stnets`` row runs only the st-networks of flowood's model (channels-last), on stored inputs of the shapes the
flow hands them, with the gradient of every input the flow needs: the convolution work that every implementation
of the same model has to do. Its speed against the best peer is the ceiling for any library built on PyTorch's
convolutions, printed in a last table with the share of flowood's time that this work takes.

Engine rows (``flowood-onnxruntime``, ``flowood-openvino``, ``flowood-openvino-bf16``) train the model as
``flowood-cl`` does, export it with ``flowood.engines.export_flow`` (parity with PyTorch checked at export) and
score on ONNX Runtime or OpenVINO (fp32; bf16 where the CPU has bf16 instructions), dequantization in PyTorch as
for every row; they have no training or memory columns, and their bits/dim are the engine's. The ``-int8`` engine
rows export with ``quantize="int8"`` (the st-networks in INT8: ONNX Runtime's QDQ quantization, or NNCF for
OpenVINO; checked against fp32 on held-out and OOD data, see ``int8_options``) and print, in a table of their own,
their speed against the best fp32 peer and flowood's fp32 graph on the same engine, with the check's bits/dim shift
and AUROC.

Every (case, library) runs in its own process: training steps/s (forward, backward, Adam step; batch 64, or 256
for vectors), peak memory of a training step (the tensor memory one more, untimed step allocates above what is
held when it starts, from PyTorch's allocation records: the GPU allocator's statistics, the CPU profiler's memory
timeline; the same from run to run) and, on the CPU, the growth of the process's peak RSS over the warm-up and
timed steps (what ``top`` shows; noisy), scoring images/s (log-likelihood under ``torch.inference_mode``, batch
1024) and bits/dim on held-out data after these steps, so speed is never bought with a worse model. Image data:
the committed FashionMNIST fixture (RGB-replicated and resized for 3x32x32), dequantized and logit-transformed the
same way for every library.
Ratios (flowood / best peer) are printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
#: epochs of classifier training for the pipeline case's ResNet-18 (:func:`detector_pipeline`)
DETECTOR_EPOCHS = 10
_IMAGE_ROWS = ("flowood", "flowood-cl", "flowood-cl+malloc", "normflows", "normflows+malloc",
               "flowood-cl-bf16+malloc", "normflows-bf16+malloc", "stnets-cl+malloc", "stnets-cl-bf16+malloc")
#: flowood's exported graph scored on an inference engine (the model is trained as flowood-cl, then exported)
_ENGINE_ROWS = ("flowood-onnxruntime+malloc", "flowood-openvino+malloc", "flowood-openvino-bf16+malloc",
                "flowood-onnxruntime-int8+malloc", "flowood-openvino-int8+malloc")
_PACKED_ROWS = ("flowood-cl-packed+malloc", "flowood-cl-packed-bf16+malloc", "stnets-cl-packed+malloc",
                "stnets-cl-packed-bf16+malloc")
_COMPILE_ROWS = ("flowood-compile+malloc", "flowood-compile-bf16+malloc")
CASES = {
    "glow-1x28x28": ("glow", (1, 28, 28), _IMAGE_ROWS + _COMPILE_ROWS + _ENGINE_ROWS),
    "glow-3x32x32": ("glow", (3, 32, 32), _IMAGE_ROWS + _COMPILE_ROWS + _ENGINE_ROWS),
    "realnvp-1x28x28": ("realnvp", (1, 28, 28), _IMAGE_ROWS + _COMPILE_ROWS + _PACKED_ROWS + _ENGINE_ROWS),
    "realnvp-3x32x32": ("realnvp", (3, 32, 32), _IMAGE_ROWS + _PACKED_ROWS + _ENGINE_ROWS),
    "maf-1792": ("maf", (1792,), ("flowood", "flowood+malloc", "nflows", "nflows+malloc", "zuko", "zuko+malloc",
                                  "flowood-bf16+malloc", "zuko-bf16+malloc") + _ENGINE_ROWS),
    "detector-resnet18-3x32x32": ("detector", (3, 32, 32), ("pytorch-ood+malloc", "flowood+malloc",
                                                            *(r for r in _ENGINE_ROWS if "bf16" not in r))),
}
HIDDEN, STEPS_PER_LEVEL, LEVELS = 64, 8, 2
MAF_LAYERS, MAF_HIDDEN = 5, 512
ALPHA = 0.05  # the logit transform of RealNVP, applied to every library's input


# -- models ----------------------------------------------------------------------------------------
def flowood_model(kind: str, shape: tuple[int, ...], packed: bool = False):
    from flowood.flows import build_flow
    if kind == "glow":
        return build_flow(flow="Glow", input_shape=shape, num_scales=LEVELS,
                          num_coupling_layers_per_scale=STEPS_PER_LEVEL,
                          st_type="glow_convnet", invconv="lu", num_mid_channels=HIDDEN)
    if kind == "realnvp":
        return build_flow(flow="RealNVP", input_shape=shape, num_scales=2, st_type="glow_convnet",
                          num_mid_channels=HIDDEN, mask="checkerboard_packed" if packed else "checkerboard")
    return build_flow(flow="MAF", input_shape=shape, num_coupling_layers=MAF_LAYERS, num_hidden_units=MAF_HIDDEN,
                      num_hidden_layers=1, actnorm=False)


class StNetsOnly(torch.nn.Module):
    """The st-networks of a flowood flow alone, fed stored inputs of the shapes the flow hands them.

    This is the convolution work that any implementation of the same model has to do (forward, and backward
    including the gradient for each st-network's input), with nothing of the flow around it: its speed bounds
    what any library calling PyTorch's convolutions can reach on this model.
    """

    def __init__(self, flow, example: torch.Tensor) -> None:
        super().__init__()
        from flowood.flows.coupling import AffineCoupling
        self.nets = torch.nn.ModuleList(m.st_net for m in flow.modules() if isinstance(m, AffineCoupling))
        seen: list[tuple[tuple[int, ...], bool]] = []  # (shape of one input, whether the flow needs its gradient)
        hooks = [net.register_forward_pre_hook(lambda _, args: seen.append((tuple(args[0].shape[1:]),
                                                                             args[0].requires_grad)))
                 for net in self.nets]
        flow.log_prob(example, validate=False)
        for h in hooks:
            h.remove()
        self.shapes = [shape for shape, _ in seen]
        self.needs_input_grad = [needs for _, needs in seen]
        self._inputs: dict[tuple[int, bool], list[torch.Tensor]] = {}

    def per_sample(self, batch: int) -> torch.Tensor:
        """Run every st-network on a batch of its stored inputs; one number per sample, to train on or discard."""
        key = (batch, torch.is_grad_enabled())
        if key not in self._inputs:
            device = next(self.parameters()).device
            made = [torch.randn(batch, *shape, device=device) for shape in self.shapes]
            made = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in made]
            self._inputs[key] = [t.requires_grad_(key[1] and needs)
                                 for t, needs in zip(made, self.needs_input_grad, strict=True)]
        return sum(net(x).flatten(1).mean(1) for net, x in zip(self.nets, self._inputs[key], strict=True))


def normflows_model(kind: str, shape: tuple[int, ...]):
    import normflows as nf
    c, h, w = shape
    if kind == "glow":  # normflows' own multi-scale Glow recipe
        q0, merges, flows = [], [], []
        for i in range(LEVELS):
            level = [nf.flows.GlowBlock(c * 2 ** (LEVELS + 1 - i), HIDDEN, split_mode="channel", scale=True)
                     for _ in range(STEPS_PER_LEVEL)]
            flows.append(level + [nf.flows.Squeeze()])
            if i > 0:
                merges.append(nf.flows.Merge())
                latent = (c * 2 ** (LEVELS - i), h // 2 ** (LEVELS - i), w // 2 ** (LEVELS - i))
            else:
                latent = (c * 2 ** (LEVELS + 1), h // 2 ** LEVELS, w // 2 ** LEVELS)
            q0.append(nf.distributions.DiagGaussian(latent, trainable=False))
        return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)

    def coupling(channels_in: int, channels_out: int, width: int, mode: str):
        net = nf.nets.ConvNet2d([channels_in, width, width, 2 * channels_out], [3, 1, 3], init_zeros=True)
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=mode)

    # generative direction: coarse level (2C, H/2, W/2) first, then merge, channel couplings, unsqueeze, checkerboard
    coarse = [coupling(2 * c, 2 * c, 2 * HIDDEN, "checkerboard" if k % 2 else "checkerboard_inv") for k in range(4)]
    fine = [coupling(2 * c, 2 * c, 2 * HIDDEN, "channel" if k % 2 else "channel_inv") for k in range(3)]
    fine += [nf.flows.Squeeze()]
    fine += [coupling(c, c, HIDDEN, "checkerboard" if k % 2 else "checkerboard_inv") for k in range(3)]
    q0 = [nf.distributions.DiagGaussian((2 * c, h // 2, w // 2), trainable=False),
          nf.distributions.DiagGaussian((2 * c, h // 2, w // 2), trainable=False)]
    return nf.MultiscaleFlow(q0, [coarse, fine], [nf.flows.Merge()], class_cond=False)


def nflows_model(shape: tuple[int, ...]):
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms import CompositeTransform, MaskedAffineAutoregressiveTransform, ReversePermutation
    (d,) = shape
    transforms = []
    for i in range(MAF_LAYERS):
        if i:
            transforms.append(ReversePermutation(features=d))
        transforms.append(MaskedAffineAutoregressiveTransform(features=d, hidden_features=MAF_HIDDEN, num_blocks=1,
                                                              use_residual_blocks=False))
    return Flow(CompositeTransform(transforms), StandardNormal([d]))


def zuko_model(shape: tuple[int, ...]):
    import zuko
    return zuko.flows.MAF(features=shape[0], context=0, transforms=MAF_LAYERS, hidden_features=(MAF_HIDDEN, MAF_HIDDEN))


# -- one library, one case, in this process ---------------------------------------------------------
def data(kind: str, shape: tuple[int, ...], n: int) -> torch.Tensor:
    if kind == "maf":
        g = torch.Generator().manual_seed(0)
        mixing = torch.randn(shape[0], shape[0], generator=g) / math.sqrt(shape[0])
        return torch.tanh(torch.randn(n, shape[0], generator=g)) @ mixing
    from flowood.data import adapt_images, load_dataset
    images = load_dataset(f"npz:{FIXTURES}/fashionmnist-small.npz", "train").data
    images = adapt_images(images, shape)
    return images[torch.arange(n) % len(images)]


def continuous(x_uint8: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantize and logit-transform 8-bit images as flowood does; returns (y, log-det incl. the 1/256 bins)."""
    from flowood.flows.preprocessing import LogitTransform, dequantize
    x = dequantize(x_uint8, "uniform", generator)
    y, log_det = LogitTransform(ALPHA)(x)
    return y, log_det - math.log(256.0) * x[0].numel()


def log_prob_fn(library: str, kind: str, model):
    if library.startswith("stnets"):
        return lambda x, g=None: model.per_sample(x.shape[0])
    if library.startswith("flowood"):
        return lambda x, g=None: model.log_prob(x, validate=False, generator=g)
    if kind == "maf":
        if library == "zuko":
            return lambda x, g=None: model().log_prob(x)
        return lambda x, g=None: model.log_prob(x)

    def peer(x, g=None):
        y, log_det = continuous(x, g)
        return model.log_prob(y, None) + log_det
    return peer


def step_peak_memory(step, dev: torch.device) -> float:
    """Peak tensor memory (bytes) that one call of ``step`` allocates above what is held when it starts.

    Counted from PyTorch's own allocation records, so it is the same from run to run (unlike the process's
    RSS): on a GPU from the caching allocator's statistics, on the CPU from the profiler's memory timeline.
    """
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        return float(torch.cuda.max_memory_allocated(dev) - base)
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())  # [times, per-time sizes by category]
    totals = [sum(per_category) for per_category in sizes]
    return float(max(totals) - totals[0]) if totals else float("nan")


def peak_rss_reset() -> int:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    return _status("VmRSS")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(case: str, row: str, device: str, steps: int) -> dict:
    kind, shape, _ = CASES[case]
    if kind == "detector":
        return detector_worker(case, row, device)
    library, _, tuning = row.partition("+")
    int8 = library.endswith("-int8")
    library = library.removesuffix("-int8")
    bf16 = library.endswith("-bf16")
    library = library.removesuffix("-bf16")
    packed = "-packed" in library
    library = library.replace("-packed", "")
    engine = next((e for e in ("onnxruntime", "openvino") if library.endswith("-" + e)), None)
    if engine is not None:
        if device != "cpu":
            raise SystemExit("the engine rows run on the CPU")
        library = "flowood-cl"  # trained as flowood-cl, then exported and scored on the engine
        engine_bf16, bf16 = bf16, False
    if tuning == "malloc":
        from flowood.allocator import tune_allocator
        if not tune_allocator(enabled=True):
            raise SystemExit("the allocator tuning needs Linux with glibc")
    torch.manual_seed(0)
    dev = torch.device(device)
    if library.startswith("stnets"):
        flow = flowood_model(kind, shape, packed).optimize(channels_last=True)
        model = StNetsOnly(flow, data(kind, shape, 64))
    elif library.startswith("flowood"):
        model = flowood_model(kind, shape, packed)
        if library != "flowood":
            model.optimize(channels_last=True, compile=library == "flowood-compile")
    elif library == "normflows":
        model = normflows_model(kind, shape)
    elif library == "nflows":
        model = nflows_model(shape)
    else:
        model = zuko_model(shape)
    model.to(dev)
    batch = 256 if kind == "maf" else 64
    train_x = data(kind, shape, 4096 if kind == "maf" else 600).to(dev)
    test_x = data(kind, shape, 1024 + 4096 if kind == "maf" else 600)[-1024:].to(dev)
    log_prob = log_prob_fn(library, kind, model)
    if bf16:
        fp32_log_prob = log_prob

        def log_prob(x, g=None):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                return fp32_log_prob(x, g).float()
    dims = math.prod(shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> float:
        idx = torch.arange(i * batch, (i + 1) * batch) % len(train_x)
        loss = -log_prob(train_x[idx]).mean() / (dims * math.log(2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    model.train()
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    # the process's peak RSS during training, warm-up included, over model and data (CPU rows only)
    rss_base = peak_rss_reset() if dev.type != "cuda" else 0
    with torch.no_grad():  # data-dependent initialisations (ActNorm) on the first batch
        log_prob(train_x[:batch])
    for i in range(3):  # warm-up (for flowood-compile: compilation happens here)
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(3 + i)
    sync()
    train_s = (time.perf_counter() - start) / steps
    rss = float("nan") if dev.type == "cuda" else float(_status("VmHWM") - rss_base)
    if engine is None:
        peak = step_peak_memory(lambda: step(3 + steps), dev)  # one more step, not timed
    else:
        step(3 + steps)  # the same step, so the exported model is the one flowood-cl scores
    model.eval()
    if engine is not None:  # export what was trained (parity with PyTorch checked at export), score on the engine
        import tempfile

        from flowood.deploy import EngineFlow, export_flow
        scratch = tempfile.TemporaryDirectory(prefix="flowood-bench-")  # removed when the worker ends
        folder = Path(scratch.name) / "export"
        exported = export_flow(model, folder, format=engine if engine == "openvino" else "onnx",
                               **(int8_options(kind, shape, Path(scratch.name)) if int8 else {}))
        quality = int8_quality(exported.quantization, engine) if int8 else {}
        on_engine = EngineFlow(folder, engine, precision="bf16" if engine_bf16 else "fp32")
        log_prob = lambda x, g=None: on_engine.log_prob(x, generator=g, validate=False)
        train_s, peak, rss = float("inf"), float("nan"), float("nan")  # trained in PyTorch: see flowood-cl
    g = torch.Generator(device=dev).manual_seed(1)
    score_batch = 1024
    with torch.inference_mode():
        stnets_only = library.startswith("stnets")  # no density: no bits/dim
        bpd = float("nan") if stnets_only else float(-log_prob(test_x, g).mean() / (dims * math.log(2)))
        big = test_x[torch.arange(score_batch) % len(test_x)]
        log_prob(big)
        sync()
        start = time.perf_counter()
        reps = 3
        for _ in range(reps):
            log_prob(big)
        sync()
        score_s = (time.perf_counter() - start) / reps
    return {"case": case, "library": row, "params": sum(p.numel() for p in model.parameters()),
            "train_steps_s": 1.0 / train_s, "score_per_s": score_batch / score_s, "peak_mib": peak / 2**20,
            "rss_mib": rss / 2**20, "test_bpd": bpd, "steps": steps + 4, **(quality if engine is not None else {})}


def detector_pipeline(shape: tuple[int, ...]):
    """The pipeline case: torchvision's ResNet-18 (10 classes, seeded initial weights: no download here) trained
    ``DETECTOR_EPOCHS`` epochs on the labels of the FashionMNIST fixture's 600 training images adapted to ``shape``,
    then Mahalanobis on its 512-dim features (fitted on 480, threshold calibrated on 120). A trained backbone
    gives the INT8 check real scores to compare (random weights move more under INT8 than trained ones: their
    ONNX Runtime graph was refused); the speed is a ResNet-18's either way."""
    from flowood.data import ArrayDataset, adapt_images, load_dataset
    from flowood.deploy import DetectorPipeline
    from flowood.embed.backbones import Preprocess, build_backbone
    from flowood.embed.extractors import ClassifierExtractor
    from flowood.embed.run import fit_classifier

    torch.manual_seed(0)
    train = load_dataset(f"npz:{FIXTURES}/fashionmnist-small.npz", "train")
    images = adapt_images(train.data, shape)
    model, preprocess = build_backbone("resnet18", num_classes=10), Preprocess(3)
    fit_classifier(model, preprocess, ArrayDataset(images, train.labels, name="fashionmnist-small"), None,
                   epochs=DETECTOR_EPOCHS, batch_size=64, seed=0, device="cpu", progress=False)
    extractor = ClassifierExtractor(model.eval(), preprocess, "resnet18", shape)
    return DetectorPipeline(extractor, method="mahalanobis").fit(images, train.labels)


def detector_images(shape: tuple[int, ...], n: int) -> torch.Tensor:
    """The pipeline case's scoring batch: ``n`` uint8 images, the MNIST fixture's test digits adapted to ``shape``
    (repeated)."""
    from flowood.data import adapt_images, load_dataset

    images = adapt_images(load_dataset(f"npz:{FIXTURES}/mnist-small.npz", "test").data, shape)
    return images[torch.arange(n) % len(images)]


def detector_worker(case: str, row: str, device: str) -> dict:
    """Scoring speed of the pipeline detector (:func:`detector_pipeline`): pytorch-ood's Mahalanobis on the torch
    model (the peer), flowood's pipeline in PyTorch, and its whole-detector export on each engine, fp32 and INT8."""
    if device != "cpu":
        raise SystemExit("the detector case runs on the CPU")
    _, shape, _ = CASES[case]
    library, _, tuning = row.partition("+")
    if tuning == "malloc":
        from flowood.allocator import tune_allocator
        tune_allocator(enabled=True)
    from flowood.data import adapt_images, load_dataset
    pipeline = detector_pipeline(shape)
    big = detector_images(shape, 1024)
    quality: dict = {}
    if library == "pytorch-ood":
        from pytorch_ood.detector import Mahalanobis
        extractor = pipeline.extractor
        peer = Mahalanobis(lambda x: extractor.body(extractor.preprocess(x)).flatten(1))
        train = load_dataset(f"npz:{FIXTURES}/fashionmnist-small.npz", "train")
        with torch.no_grad():
            peer.fit_features(extractor.body(extractor.preprocess(adapt_images(train.data, shape))).flatten(1),
                              train.labels)

        def score(x):
            with torch.inference_mode():
                return peer.predict(x)
    elif library == "flowood":
        score = pipeline.anomaly_score
    else:
        import tempfile

        from flowood.deploy.export import ExportedDetector, export_detector
        engine = next(e for e in ("onnxruntime", "openvino") if e in library)
        scratch = tempfile.TemporaryDirectory(prefix="flowood-bench-")  # removed when the worker ends
        folder = Path(scratch.name) / "export"
        int8 = int8_options("detector", shape, folder.parent) if library.endswith("-int8") else {}
        exported = export_detector(pipeline, folder, format="openvino" if engine == "openvino" else "onnx", **int8)
        if exported.quantization:
            checked = exported.quantization["check"]["per_engine"][engine]
            auroc = next(iter(checked["auroc"].values()))
            quality = {"bpd_shift": next(iter(checked["scores"].values()))["mean_shift_in_spreads"],
                       "auroc_fp32": auroc["fp32"], "auroc_int8": auroc["int8"]}
        on_engine = ExportedDetector(folder, engine)
        score = on_engine.anomaly_score
    score(big[:256])
    start = time.perf_counter()
    reps = 3
    for _ in range(reps):
        score(big)
    score_s = (time.perf_counter() - start) / reps
    params = sum(p.numel() for p in pipeline.extractor.model.parameters())  # (its body shares the weights)
    return {"case": case, "library": row, "params": params, "train_steps_s": float("inf"),
            "score_per_s": len(big) / score_s, "peak_mib": float("nan"), "rss_mib": float("nan"),
            "test_bpd": float("nan"), "steps": 0, **quality}


def int8_options(kind: str, shape: tuple[int, ...], scratch: Path) -> dict:
    """The INT8 export's calibration and check sets: the FashionMNIST fixture (in-distribution, its 600 training
    images calibrate) and the MNIST fixture (OOD, 200 test images each) for images; for MAF the benchmark's vectors
    (4096 training, 1024 test) and, as OOD, the same vectors scaled by 1.5."""
    if kind != "maf":
        return dict(quantize="int8", dataset=f"npz:{FIXTURES}/fashionmnist-small.npz",
                    check_ood=[f"npz:{FIXTURES}/mnist-small.npz"], calibration=600, check_held_out=200)
    x = data(kind, shape, 4096 + 1024).numpy()
    for name, scale in (("ind", 1.0), ("ood", 1.5)):
        np.savez(scratch / f"{name}.npz", embeddings_train=x[:4096] * scale, embeddings_test=x[4096:] * scale)
    return dict(quantize="int8", dataset=f"npz:{scratch}/ind.npz", check_ood=[f"npz:{scratch}/ood.npz"],
                calibration=1000, check_held_out=1024)


def int8_quality(quantization: dict, engine: str) -> dict:
    """From an INT8 export's check: the mean bits/dim shift on held-out data and the AUROC in fp32 and INT8."""
    checked = quantization["check"]["per_engine"][engine]
    held_out = next(iter(checked["bits_per_dim"].values()))
    auroc = next(iter(checked["auroc"].values()))
    return {"bpd_shift": held_out["mean_shift"], "auroc_fp32": auroc["fp32"], "auroc_int8": auroc["int8"]}


# -- driver ----------------------------------------------------------------------------------------
def print_table(title: str, header: str, alignment: str, lines: list[str]) -> None:
    """A titled Markdown table of ``lines``, or nothing when there are none."""
    if lines:
        print(f"\n{title}\n{header}\n{alignment}")
        print("\n".join(lines))



def median_row(runs: list[dict]) -> dict:
    """One row from repeated runs of it: the median of every measurement, and the range of training speed."""
    row = dict(runs[0])
    for key in ("train_steps_s", "score_per_s", "peak_mib", "rss_mib", "test_bpd", "bpd_shift", "auroc_fp32",
                "auroc_int8"):
        if key not in runs[0]:
            continue
        row[key] = float(np.median([r[key] for r in runs]))
    row["train_min"] = min(r["train_steps_s"] for r in runs)
    row["train_max"] = max(r["train_steps_s"] for r in runs)
    row["runs"] = len(runs)
    return row


def peer_rows(rows: list[dict], row: dict) -> tuple[list[dict], dict | None]:
    """The peer rows of ``row``'s case at its precision (fp32 or bf16), and the one that trains fastest."""
    bf16 = "-bf16" in row["library"]
    peers = [r for r in rows if r["case"] == row["case"] and not r["library"].startswith(("flowood", "stnets"))
             and ("-bf16" in r["library"]) == bf16]
    return peers, max(peers, key=lambda r: r["train_steps_s"], default=None)


def _shown(value: float, spec: str, unit: str = "") -> str:
    """A number for the tables; "–" where a row has none (engine rows only score)."""
    return "–" if not math.isfinite(value) or value == 0 else f"{value:{spec}}{unit}"


def versions() -> str:
    out = [f"torch {torch.__version__}"]
    from importlib.metadata import PackageNotFoundError, version
    for name in ("normflows", "nflows", "zuko", "onnxruntime", "openvino"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help="run only these rows of each case (e.g. flowood-cl+malloc normflows+malloc)")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "LIBRARY"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every row this many times, in rounds over all rows so that drift of the machine "
                             "hits every library alike; report the median (and the range of training steps/s)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    known_rows = sorted({row for case in args.cases for row in CASES[case][2]})
    unknown = [row for row in args.rows or [] if row not in known_rows]
    if unknown:
        parser.error(f"no row {', '.join(unknown)} in the cases {', '.join(args.cases)}; their rows: "
                     f"{', '.join(known_rows)}")
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], args.worker[1], args.device, args.steps)))
        return
    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"device: {args.device} ({dev_name}); {versions()}; threads {torch.get_num_threads()}; "
          f"{args.steps} timed steps; {args.repeats} run(s) per row")
    runs: dict[tuple[str, str], list[dict]] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for repeat in range(args.repeats):
        for case in args.cases:
            for library in CASES[case][2]:
                if args.rows and library not in args.rows:
                    continue
                proc = subprocess.run([sys.executable, __file__, "--worker", case, library, "--device", args.device,
                                       "--steps", str(args.steps)], capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(f"{case} / {library}: failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
                    continue
                r = json.loads(line[7:])
                runs.setdefault((case, library), []).append(r)
                print(f"[{repeat + 1}/{args.repeats}] {case:16s} {library:22s} params {r['params']:>10,}  train "
                      f"{r['train_steps_s']:7.2f} steps/s  score {r['score_per_s']:9.0f}/s  "
                      f"peak {r['peak_mib']:7.1f} MiB (RSS {r['rss_mib']:6.1f})  bpd {r['test_bpd']:.3f}", flush=True)
    rows = [median_row(rs) for rs in runs.values()]
    print(f"\nMedians of {args.repeats} run(s):")
    print("| case | library | params | train steps/s | (range) | score samples/s | peak MiB | RSS MiB | bits/dim "
          f"after {args.steps + 4} steps |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rss = "–" if math.isnan(r["rss_mib"]) else f"{r['rss_mib']:.1f}"
        # engine rows score only (their model is trained as flowood-cl), as do the detector case's rows
        trained = 0 < r["train_steps_s"] < math.inf
        print(f"| {r['case']} | {r['library']} | {r['params']:,} | {_shown(r['train_steps_s'], '.2f')} | "
              f"{r['train_min']:.2f}-{r['train_max']:.2f} | {r['score_per_s']:.0f} | {_shown(r['peak_mib'], '.1f')} | "
              f"{rss} | {r['test_bpd']:.3f} |" if trained else
              f"| {r['case']} | {r['library']} | {r['params']:,} | – | – | {r['score_per_s']:.0f} | – | – | "
              f"{_shown(r['test_bpd'], '.3f')} |")
    print("\nRatios, flowood / best peer of the same precision (training and scoring: higher is better; memory: "
          "lower is better):")
    print("| case | best peer | train | score | peak memory | params |")
    print("|---|---|---:|---:|---:|---:|")
    for case in args.cases:
        for ours in [r for r in rows if r["case"] == case and r["library"].startswith("flowood")]:
            peers, best = peer_rows(rows, ours)
            if not peers:
                continue
            print(f"| {case} ({ours['library']}) | {best['library']} | "
                  f"{_shown(ours['train_steps_s'] / best['train_steps_s'], '.2f', 'x')} | "
                  f"{ours['score_per_s'] / max(p['score_per_s'] for p in peers):.2f}x | "
                  f"{_shown(ours['peak_mib'] / max(best['peak_mib'], 1e-9), '.2f', 'x')} | "
                  f"{ours['params'] / best['params']:.3f} |")
    ceiling_lines = []
    for c in (r for r in rows if r["library"].startswith("stnets")):
        peers, best = peer_rows(rows, c)
        ours = next((r for r in rows if r["case"] == c["case"] and r["library"] == c["library"].replace("stnets",
                     "flowood")), None)
        if not peers or ours is None:
            continue
        ceiling_lines.append(
            f"| {c['case']} | {c['library']} | {best['library']} | {c['train_steps_s'] / best['train_steps_s']:.2f}x | "
            f"{c['score_per_s'] / max(p['score_per_s'] for p in peers):.2f}x | {ours['library']} | "
            f"{ours['train_steps_s'] / c['train_steps_s']:.0%} | {ours['score_per_s'] / c['score_per_s']:.0%} |")
    int8_lines = []
    for q in (r for r in rows if "-int8" in r["library"]):
        fp32 = next((r for r in rows if r["case"] == q["case"] and r["library"] == q["library"].replace("-int8", "")),
                    None)
        peers, _ = peer_rows(rows, q)
        if fp32 is None or not peers:
            continue
        int8_lines.append(
            f"| {q['case']} | {q['library']} | {q['score_per_s']:.0f} | "
            f"{q['score_per_s'] / max(p['score_per_s'] for p in peers):.2f}x | "
            f"{q['score_per_s'] / fp32['score_per_s']:.2f}x | {q['bpd_shift']:+.4f} | "
            f"{q['auroc_fp32']:.4f} -> {q['auroc_int8']:.4f} ({q['auroc_int8'] - q['auroc_fp32']:+.4f}) |")
    print_table("INT8: scoring against the best fp32 peer and flowood's own fp32 graph on the same engine, with the "
                "export check's mean shift on held-out in-distribution data (bits/dim; for the detector, of its score "
                "as a share of the calibration scores' spread) and AUROC (held-out in-distribution against the OOD "
                "set):", "| case | row | score samples/s | / best peer | / own fp32 | held-out shift | AUROC fp32 "
                "-> INT8 |", "|---|---|---:|---:|---:|---:|---:|", int8_lines)
    default_lines = []
    for ours in (r for r in rows if r["library"].startswith("flowood") and "-bf16" in r["library"]
                 and 0 < r["train_steps_s"] < math.inf):
        fp32_peers = [r for r in rows if r["case"] == ours["case"] and "-bf16" not in r["library"]
                      and not r["library"].startswith(("flowood", "stnets"))]
        own_name = ours["library"].replace("-bf16", "")
        own = next((r for r in rows if r["case"] == ours["case"] and r["library"] == own_name), None)
        if not fp32_peers or own is None:
            continue
        best = max(fp32_peers, key=lambda r: r["train_steps_s"])
        default_lines.append(
            f"| {ours['case']} | {ours['library']} | {best['library']} | "
            f"{ours['train_steps_s'] / best['train_steps_s']:.2f}x | "
            f"{ours['train_steps_s'] / own['train_steps_s']:.2f}x | "
            f"{ours['test_bpd']:.3f} | {own['test_bpd']:.3f} | {best['test_bpd']:.3f} |")
    print_table("Training at the defaults: flowood's bf16 st-networks (`flowood train`'s precision on a CPU with "
                "native BF16) against the fastest peer in fp32 (the peers' default) and flowood's own fp32 row, "
                "with bits/dim after the same steps:",
                "| case | flowood row | best fp32 peer | train / peer | / own fp32 | bits/dim | own fp32 | peer |",
                "|---|---|---|---:|---:|---:|---:|---:|", default_lines)
    print_table("Ceiling: the st-networks alone (the convolutions every implementation of the model runs) / best peer "
                "of the same precision, and the share of flowood's time they take:", "| case | st-networks | best "
                "peer | train | score | flowood row | its train | its score |", "|---|---|---|---:|---:|---|---:|---:|",
                ceiling_lines)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
