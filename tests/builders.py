"""Tiny builders shared by test files: fixture data, small flows and checkpoints, parameter perturbation, files in
the formats the readers take, and the command line as a subprocess.

Importable from any test file (pyproject's pytest ``pythonpath`` holds ``tests/``). Fixtures built from these
(data-set names, trained models, tiny training configurations, the mini experiment suite) are in conftest.py.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from flowood.checkpoints import save_flow
from flowood.flows import FlowModel, RealNVP, build_flow

FIXTURES = Path(__file__).parent / "fixtures"
SRC = Path(__file__).resolve().parents[1] / "src"


# -- the committed fixtures -----------------------------------------------------------------------------------------
def fixture_arrays(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 1, 28, 28]`` (uint8) and labels of ``tests/fixtures/{name}-small.npz`` (fashionmnist, mnist)."""
    with np.load(FIXTURES / f"{name}-small.npz") as f:
        return f[f"images_{split}"], f[f"labels_{split}"]


@functools.cache
def _original_models() -> dict:
    with gzip.open(FIXTURES / "original_models.json.gz", "rt") as f:
        return json.load(f)["cases"]


def original_model_case(name: str) -> dict:
    """A model case of ``tests/fixtures/original_models.json.gz`` (read once; do not modify it): the original code's
    parameter names and shapes, flowood's options for the same model, inputs and the original's log-likelihoods
    (``experiments/original_code/compare_with_original.py``)."""
    return _original_models()[name]


def original_pattern_weights(case: dict) -> dict[str, torch.Tensor]:
    """The original model's state dict under the reference protocol of ``original_models.json.gz``: parameter k is
    ``amp * sin(0.37 i + k)`` (plus the identity for Glow's 1x1 convolutions), BatchNorm statistics as
    initialised."""
    state = {}
    eye = set(case["eye_k"])
    for k, (name, shape) in enumerate(case["parameters"]):
        numel = math.prod(shape)
        value = case["amp"] * torch.sin(torch.arange(numel, dtype=torch.float64) * 0.37 + k).reshape(shape)
        state[name] = (value + torch.eye(shape[0], dtype=torch.float64) if k in eye else value).float()
    for name, shape in case["buffers"]:
        fill = 1.0 if name.endswith("running_var") else 0.0
        state[name] = torch.tensor(0) if name.endswith("num_batches_tracked") else torch.full(shape, fill)
    return state


# -- small flows ------------------------------------------------------------------------------------------------------
def perturb(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Move every parameter away from its (identity) initialisation by ``scale`` times standard normal noise."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Give zero-initialised output layers random weights so the layer is not the identity."""
    return perturb(module, 0.1)


def tiny_realnvp(input_shape: tuple[int, ...] = (1, 8, 8), num_mid_channels: int = 4, init_batch: int = 0,
                 **options) -> FlowModel:
    """A RealNVP with one residual block per st-network. With ``init_batch`` > 0, one log-likelihood pass on that
    many uniform-noise images initialises it first (as a saved, trained model is)."""
    flow = RealNVP(input_shape, num_blocks=1, num_mid_channels=num_mid_channels, **options)
    if init_batch:
        flow.log_prob(torch.rand(init_batch, *input_shape))
    return flow


def tiny_checkpoint(path: Path, dataset: str = "digits", init_batch: int = 4, **options) -> Path:
    """An initialised :func:`tiny_realnvp` saved with ``save_flow`` at ``path``, as if trained on ``dataset``."""
    return save_flow(tiny_realnvp(init_batch=init_batch, **options), path, {"dataset": dataset})


TINY = dict(num_blocks=1, num_mid_channels=4, latent_dim=3)

# one per image architecture option the flows offer (the flows' tests of invertibility, log-det and likelihood)
IMAGE_CONFIGS = {
    "realnvp-checkerboard-2scales": dict(flow="RealNVP", input_shape=(1, 4, 4), num_scales=2, **TINY),
    "realnvp-packed-2scales": dict(flow="RealNVP", input_shape=(2, 4, 4), mask="checkerboard_packed", num_scales=2,
                                   **TINY),
    "realnvp-3scales-rgb": dict(flow="RealNVP", input_shape=(3, 4, 4), num_scales=3, **TINY),
    "realnvp-horizontal": dict(flow="RealNVP", input_shape=(1, 4, 4), mask="horizontal", num_scales=1,
                               num_coupling_layers_per_scale=4, **TINY),
    "realnvp-vertical": dict(flow="RealNVP", input_shape=(1, 4, 4), mask="vertical", num_scales=2, **TINY),
    "realnvp-cycle": dict(flow="RealNVPCycleMask", input_shape=(1, 4, 4), **TINY),
    "realnvp-cycle-multiscale": dict(flow="RealNVP", input_shape=(2, 4, 4), mask="cycle", num_scales=2, **TINY),
    "realnvp-autoencoder": dict(flow="RealNVP", input_shape=(1, 14, 14), num_scales=1, st_type="autoencoder",
                                num_coupling_layers_per_scale=2, latent_dim=3),
    "realnvp-conv_bottleneck": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="conv_bottleneck", **TINY),
    "realnvp-resnet_ae": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="resnet_ae", num_blocks=2,
                              num_mid_channels=4, latent_dim=3),
    "realnvp-highway-nobn": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="highway", batchnorm=False, **TINY),
    "realnvp-convnet-noskip": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="convnet", skip=False, **TINY),
    "realnvp-plain-convs": dict(flow="RealNVP", input_shape=(1, 4, 4), weight_norm=False, init_zeros=True, **TINY),
    "glow-channel": dict(flow="Glow", input_shape=(1, 4, 4), num_scales=2, num_coupling_layers_per_scale=2, **TINY),
    "glow-highway-rgb": dict(flow="Glow", input_shape=(3, 4, 4), num_scales=1, num_coupling_layers_per_scale=2,
                             st_type="highway", **TINY),
    "glow-checkerboard": dict(flow="Glow", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=2,
                              mask="checkerboard", **TINY),
    "glow-packed-bottleneck": dict(flow="Glow", input_shape=(1, 8, 8), num_scales=1, num_coupling_layers_per_scale=2,
                                   mask="checkerboard_packed", st_type="conv_bottleneck", **TINY),
    "glow-cycle-bottleneck-lu": dict(flow="Glow", input_shape=(1, 8, 8), num_scales=1, num_coupling_layers_per_scale=2,
                                     mask="cycle", st_type="conv_bottleneck", invconv="lu", **TINY),
    "glow-resnet": dict(flow="Glow", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=2,
                        st_type="resnet", **TINY),
}


def ready_flow(config: dict) -> FlowModel:
    """``build_flow(config)`` initialised on uniform noise (ActNorm's data-dependent start), perturbed, in eval
    mode."""
    flow = build_flow(config)
    flow.train()
    flow.log_prob(torch.rand(8, *flow.input_shape))  # ActNorm data-dependent init
    return perturb(flow).eval()


# image flows of several architectures on 28x28 and 8x8 inputs (the inspect analyses and command)
INSPECT_CONFIGS = {
    "realnvp-gray": dict(flow="RealNVP", input_shape=(1, 28, 28), num_blocks=1, num_mid_channels=4),
    "glow-gray": dict(flow="Glow", input_shape=(1, 28, 28), num_coupling_layers_per_scale=2, num_blocks=1,
                      num_mid_channels=4, st_type="highway"),
    "cycle-bottleneck-rgb": dict(flow="RealNVPCycleMask", input_shape=(3, 8, 8), st_type="conv_bottleneck",
                                 num_mid_channels=4, latent_dim=3),
    "realnvp-packed-checkerboard": dict(flow="RealNVP", input_shape=(1, 28, 28), mask="checkerboard_packed",
                                        num_blocks=1, num_mid_channels=4),
    "glow-rgb-checkerboard": dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2, num_coupling_layers_per_scale=1,
                                  mask="checkerboard", num_blocks=1, num_mid_channels=4),
}


def perturbed_flow(config: dict) -> FlowModel:
    """``build_flow(config)``, initialised on random 8-bit images, perturbed, in eval mode."""
    flow = build_flow(config)
    flow.log_prob(torch.randint(0, 256, (8, *flow.input_shape), dtype=torch.uint8))
    return perturb(flow).eval()


# the st-network kinds whose fast paths (channels-last memory, in-place activations) must not change the numbers
SPEED_CONFIGS = {
    "realnvp-resnet-gray": dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=2, num_mid_channels=8),
    "realnvp-resnet-rgb": dict(flow="RealNVP", input_shape=(3, 8, 8), num_blocks=1, num_mid_channels=8),
    "glow-convnet-rgb": dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2, num_coupling_layers_per_scale=2,
                             num_blocks=2, num_mid_channels=8),
    "realnvp-bottleneck": dict(flow="RealNVP", input_shape=(1, 8, 8), st_type="conv_bottleneck", num_mid_channels=8,
                               latent_dim=4),
    "realnvp-autoencoder": dict(flow="RealNVP", input_shape=(1, 14, 14), num_scales=1, st_type="autoencoder",
                                num_coupling_layers_per_scale=2, latent_dim=4),
}


def trained_like(config: dict, seed: int = 0) -> FlowModel:
    """``build_flow(config)`` seeded with ``seed``, initialised on random 8-bit images (ActNorm, BatchNorm
    statistics) and perturbed, left in training mode."""
    torch.manual_seed(seed)
    flow = build_flow(config)
    flow.train()
    flow.log_prob(torch.randint(0, 256, (16, *flow.input_shape), dtype=torch.uint8))  # ActNorm init, BN stats
    return perturb(flow)


# -- files in the formats the data readers take -----------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """``array`` (uint8) as an IDX file (MNIST's format), gzipped unless ``compress`` is False."""
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.tobytes())


# -- the command line -------------------------------------------------------------------------------------------------
def start_flowood(*args: str) -> subprocess.Popen:
    """``python -m flowood.cli.main ARGS`` in a subprocess (this checkout's source, one thread), with stdout and
    stderr together in ``.stdout``."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "flowood.cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


# -- a user's own model, saved with torch.export ---------------------------------------------------------------
class UserClassifier(torch.nn.Module):
    """A user's classifier: normalisation inside, (features, logits) out."""

    def __init__(self, features_only: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 6))
        self.head = torch.nn.Linear(6, 3)
        self.features_only = features_only

    def forward(self, x):
        features = self.body((x - 0.3) / 0.3)
        return features if self.features_only else (features, self.head(features))


def export_program(model: torch.nn.Module, path: Path, size: int = 28, dynamic: bool = True) -> Path:
    """``model`` saved with ``torch.export`` (a dynamic batch, or a fixed batch of 1) at ``path``."""
    example = torch.rand(2 if dynamic else 1, 1, size, size)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model.eval(), (example,), dynamic_shapes=shapes), str(path))
    return path


# -- a detector served over HTTP --------------------------------------------------------------------------------------
class Served:
    """A ``flowood serve`` subprocess on 127.0.0.1 (:func:`start_server`): its base URL, its log file and its token."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path, token: str | None) -> None:
        self.process, self.url, self.log, self.token = process, url, log, token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait (killed past ``timeout``); the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(detector: Path, log: Path, *args: str, token: str | None = None, ready_within: float = 90,
                 command: tuple[str, ...] | None = None, env: dict[str, str] | None = None) -> Served:
    """``flowood serve --detector DETECTOR ARGS`` on a free port with one thread, waited for until ``/health`` answers
    200 (or the process ends: then its log is raised). ``command`` and ``env`` replace this checkout's
    ``python -m flowood.cli.main`` and its environment (e.g. an installed wheel's ``flowood``)."""
    import time
    import urllib.request

    port = free_port()
    extra = []
    if token is not None:
        (log.parent / "token.txt").write_text(token + "\n")
        extra = ["--token_file", str(log.parent / "token.txt")]
    env = env or dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    command = command or (sys.executable, "-m", "flowood.cli.main")
    with open(log, "wb") as out:
        process = subprocess.Popen([*command, "serve", "--detector", str(detector),
                                    "--port", str(port), "--threads", "1", *extra, *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(process, f"http://127.0.0.1:{port}", log, token)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flowood serve ended with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{served.url}/health", timeout=2) as response:
                if response.status == 200:
                    return served
        except OSError:
            pass
        time.sleep(0.3)
    served.stop(5)
    raise RuntimeError(f"flowood serve was not ready within {ready_within} s:\n{log.read_text()}")


def png_bytes(image: np.ndarray) -> bytes:
    """An image array (``[H, W]`` or ``[H, W, 3]``, uint8 or uint16) as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
