"""flowood's paper-scale models against the original code (github.com/PolinaKirichenko/flows_ood), side by side.

For every paper config shipped with flowood (``flowood reproduce --list``) this builds the flowood model at paper
scale and the original code's model with the constructor its training scripts call, and compares parameter counts.
For a set of cases (the paper's networks and small variants) it then sets every weight of the original model to a
deterministic pattern, copies the original's state dict into the flowood model with
``flowood.flows.original.load_original_state_dict``, and compares per-image log-likelihoods and latents on the same
inputs and dequantization noise. With ``--write-fixture`` it records what the test suite checks without the original
code: the original's parameter names and shapes, the inputs, and the original's log-likelihoods
(``tests/fixtures/original_models.json.gz``).

Needs a checkout of the original code (it runs on torch 2.x once ``torch.qr`` is provided, which this script does):

    git clone https://github.com/PolinaKirichenko/flows_ood /path/to/flows_ood
    .venv/bin/python experiments/original_code/compare_with_original.py --original /path/to/flows_ood \
        [--write-fixture] [--skip-large]

Weights protocol: parameter ``k`` (in the original's ``named_parameters()`` order) is set to
``amp * sin(0.37 * arange(numel) + k)`` (float64, then float32); the 1x1 convolutions of Glow get the identity added
(the pattern alone is singular). BatchNorm keeps its initial running statistics (mean 0, variance 1); both models
run in eval mode. Inputs: ``torch.manual_seed(1); torch.randint(0, 256, (4, C, H, W))`` as ``k / 255`` (vectors:
``torch.randn(4, D)``). Noise: ``u = 0.5`` ("center") and ``u ~ U[0, 1)`` drawn after ``torch.manual_seed(2)``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowood.flows import build_flow
from flowood.flows.original import load_original_state_dict
from flowood.reproduce.experiments import load_experiments
from flowood.tables import Table
from flowood.training.config import TrainConfig

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "original_models.json.gz"
#: cases whose likelihoods are compared: name -> (flowood options, pattern amplitude)
CASES: dict[str, tuple[dict[str, Any], float]] = {
    "realnvp_fashionmnist": (dict(flow="RealNVP", input_shape=(1, 28, 28), num_scales=2, num_blocks=6,
                                  num_mid_channels=64), 0.01),
    "realnvp_cifar10": (dict(flow="RealNVP", input_shape=(3, 32, 32), num_scales=3, num_blocks=8,
                             num_mid_channels=64), 0.01),
    "cycle_mask_fashionmnist": (dict(flow="RealNVPCycleMask", input_shape=(1, 28, 28), num_blocks=6,
                                     num_mid_channels=64), 0.01),
    "horizontal_mask_fashionmnist": (dict(flow="RealNVPMaskHorizontal", input_shape=(1, 28, 28), num_blocks=6,
                                          num_mid_channels=64), 0.01),
    **{f"bottleneck_l{latent}_fashionmnist": (dict(flow="RealNVP", input_shape=(1, 28, 28), num_scales=2,
                                                    num_blocks=6, num_mid_channels=64, st_type="autoencoder",
                                                    latent_dim=latent), 0.1) for latent in (10, 50, 100)},
    "glow_fashionmnist": (dict(flow="Glow", input_shape=(1, 28, 28), num_scales=2, num_coupling_layers_per_scale=16,
                               num_blocks=3, num_mid_channels=200, st_type="highway"), 0.01),
    "glow_cifar10": (dict(flow="Glow", input_shape=(3, 32, 32), num_scales=3, num_coupling_layers_per_scale=8,
                          num_blocks=3, num_mid_channels=400, st_type="highway"), 0.01),
    "tabular_miniboone": (dict(flow="RealNVPTabular", input_shape=(50,), num_coupling_layers=8,
                               num_hidden_units=256, num_hidden_layers=1), 0.01),
    "small_realnvp_1x8x8": (dict(flow="RealNVP", input_shape=(1, 8, 8), num_scales=2, num_blocks=1,
                                 num_mid_channels=8), 0.1),
    "small_realnvp_3x16x16": (dict(flow="RealNVP", input_shape=(3, 16, 16), num_scales=3, num_blocks=1,
                                   num_mid_channels=4), 0.1),
    "small_realnvp_nobn_noskip": (dict(flow="RealNVP", input_shape=(1, 8, 8), num_scales=2, num_blocks=2,
                                       num_mid_channels=8, batchnorm=False, skip=False), 0.1),
    "small_resnet_ae_1x8x8": (dict(flow="RealNVP", input_shape=(1, 8, 8), num_scales=1, num_blocks=2,
                                   num_mid_channels=4, st_type="resnet_ae", latent_dim=3), 0.1),
    "small_convnet_1x8x8": (dict(flow="RealNVP", input_shape=(1, 8, 8), num_scales=2, num_blocks=1,
                                 num_mid_channels=8, st_type="convnet"), 0.1),
    "small_cycle_mask_1x8x8": (dict(flow="RealNVPCycleMask", input_shape=(1, 8, 8), num_blocks=1,
                                    num_mid_channels=8), 0.1),
    "small_horizontal_mask_1x8x8": (dict(flow="RealNVPMaskHorizontal", input_shape=(1, 8, 8), num_blocks=1,
                                         num_mid_channels=8), 0.1),
    "small_realnvp_8_layers_1x8x8": (dict(flow="RealNVP8Layers", input_shape=(1, 8, 8), num_blocks=1,
                                          num_mid_channels=8), 0.1),
    "small_glow_highway_3x8x8": (dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2,
                                      num_coupling_layers_per_scale=2, num_blocks=2, num_mid_channels=8,
                                      st_type="highway"), 0.1),
    "small_glow_convnet_1x8x8": (dict(flow="Glow", input_shape=(1, 8, 8), num_scales=2,
                                      num_coupling_layers_per_scale=2, num_mid_channels=8,
                                      st_type="glow_convnet"), 0.1),
    "small_tabular_5": (dict(flow="RealNVPTabular", input_shape=(5,), num_coupling_layers=3, num_hidden_units=16,
                             num_hidden_layers=1), 0.1),
    "small_tabular_dropout_6": (dict(flow="RealNVPTabular", input_shape=(6,), num_coupling_layers=2,
                                     num_hidden_units=16, num_hidden_layers=2, dropout=True), 0.1),
}
LARGE = {"realnvp_cifar10", "glow_cifar10"}


def original_model(original: Any, cfg: dict[str, Any]) -> torch.nn.Module:
    """The original code's model for a resolved flowood config, built as its training scripts build it."""
    flow, shape = cfg["flow"], tuple(cfg["input_shape"])
    if flow == "RealNVPTabular":
        return original.RealNVPTabular(in_dim=shape[0], num_coupling_layers=cfg["num_coupling_layers"],
                                       hidden_dim=cfg["num_hidden_units"], num_layers=cfg["num_hidden_layers"],
                                       init_zeros=cfg["init_zeros"], dropout=cfg["dropout"])
    if flow == "Glow":
        return original.Glow(image_shape=shape, mid_channels=cfg["num_mid_channels"], num_scales=cfg["num_scales"],
                             num_coupling_layers_per_scale=cfg["num_coupling_layers_per_scale"],
                             num_layers=cfg["num_blocks"], multi_scale=True, st_type=cfg["st_type"])
    classes = {("checkerboard", None): "RealNVP", ("cycle", 8): "RealNVPCycleMask",
               ("horizontal", 8): "RealNVPMaskHorizontal", ("checkerboard", 8): "RealNVP8Layers"}
    cls = classes[(cfg["mask"], cfg["num_coupling_layers_per_scale"])]
    return getattr(original, cls)(num_scales=cfg["num_scales"], in_channels=shape[0],
                                  mid_channels=cfg["num_mid_channels"], num_blocks=cfg["num_blocks"],
                                  init_zeros=cfg["init_zeros"], st_type=cfg["st_type"], use_batch_norm=cfg["batchnorm"],
                                  img_shape=shape, skip=cfg["skip"], latent_dim=cfg["latent_dim"])


def import_original(path: Path) -> Any:
    # removed in torch 2.x (newer versions keep a name that raises); the original calls it on square matrices only
    torch.qr = lambda a, some=True: torch.linalg.qr(a, mode="reduced" if some else "complete")  # type: ignore
    sys.path.insert(0, str(path))
    import flow_ssl
    return flow_ssl


def pattern_weights(model: torch.nn.Module, amp: float, square_weights: set[str]) -> list[int]:
    """Set every parameter to the deterministic pattern; return the indices k that got the identity added."""
    eye_k = []
    with torch.no_grad():
        for k, (name, p) in enumerate(model.named_parameters()):
            value = amp * torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.37 + k).reshape(p.shape)
            if name in square_weights:
                value = value + torch.eye(p.shape[0], dtype=torch.float64)
                eye_k.append(k)
            p.copy_(value.float())
    return eye_k


def inputs(shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(1)
    if len(shape) == 1:
        return torch.randn(4, *shape)
    return torch.randint(0, 256, (4, *shape), dtype=torch.uint8)


@contextlib.contextmanager
def fixed_noise(u: torch.Tensor):
    """The original dequantizes with ``torch.rand_like`` inside its logit layer; make that return ``u``."""
    rand_like = torch.rand_like
    torch.rand_like = lambda t, *a, **k: u.to(t)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.rand_like = rand_like


def original_loglik(model: torch.nn.Module, x: torch.Tensor, u: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's per-sample log-likelihood (its FlowLoss: prior + log-det - D log 256) and flat latents."""
    d = x[0].numel()
    with torch.no_grad(), (fixed_noise(u) if u is not None else contextlib.nullcontext()):
        z = model(x.float() / 255 if x.dtype == torch.uint8 else x).reshape(len(x), -1)
        prior = -0.5 * (z * z).sum(1) - 0.5 * d * math.log(2 * math.pi)
        return prior + model.logdet() - d * math.log(256), z


def flowood_loglik(flow: torch.nn.Module, x: torch.Tensor, u: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """flowood's log-likelihood in the original's convention, and its latents in the original's order."""
    with torch.no_grad():
        if not flow.discrete:
            v = x
            shift = -x[0].numel() * math.log(256)
        else:
            v = (255 * (x.float() / 255) + u) / 256
            shift = x[0].numel() * math.log(255 / 256)
        h, _, factored = flow._run(v)
        z = torch.cat([t.flatten(1) for t in (*factored, h)], 1)
        return flow._density(v) + shift, z


def compare_counts(original: Any) -> Table:
    """Parameter counts of every shipped paper config, flowood against the original."""
    rows = []
    for exp in load_experiments(scale="paper", suite="all"):
        cfg = flow_config_of(exp)
        if cfg is None:
            rows.append([exp.name, "-", "-", "(flowood-only model or unknown input shape)"])
            continue
        with torch.device("meta"):
            ours = sum(p.numel() for p in build_flow(cfg).parameters())
            theirs = sum(p.numel() for p in original_model(original, cfg).parameters())
        rows.append([exp.name, f"{ours:,}", f"{theirs:,}", "yes" if ours == theirs else "NO"])
    return Table(["config", "flowood", "original", "equal"], rows, align="llll")


def flow_config_of(exp: Any) -> dict[str, Any] | None:
    """The resolved flowood architecture of an experiment at paper scale, or None for flowood-only models."""
    train = TrainConfig.from_dict(dict(exp.train))
    shape = exp.input_shape()
    if train.architecture.flow == "MAF" or shape is None:
        return None
    return train.flow_config(shape).resolved().to_dict()


def patterned_original_model(original: Any, cfg: dict[str, Any], amp: float) -> tuple[torch.nn.Module, list[int]]:
    """The original's model for ``cfg`` with every parameter set to the deterministic pattern (:func:`pattern_weights`,
    the identity added to Glow's square 1x1-convolution weights), and the indices that got the identity."""
    torch.manual_seed(0)
    model = original_model(original, cfg)
    square = {n for n, p in model.named_parameters() if p.dim() == 2 and p.shape[0] == p.shape[1]
              and n.endswith("module1.weight")}
    return model, pattern_weights(model, amp, square)


def run_case(original: Any, name: str, options: dict[str, Any], amp: float) -> dict[str, Any]:
    cfg = build_flow(options).config
    model, eye_k = patterned_original_model(original, cfg, amp)
    for module in model.modules():
        if hasattr(module, "inited"):  # the original's ActNorm: use the weights set, not a data-dependent init
            module.inited = True
    model.eval()
    flow = load_original_state_dict(build_flow(cfg), model.state_dict()).eval()
    x = inputs(tuple(cfg["input_shape"]))
    torch.manual_seed(2)
    noises = {"center": torch.full(x.shape, 0.5), "uniform": torch.rand(x.shape)} if x.dtype == torch.uint8 \
        else {"none": None}
    result: dict[str, Any] = {"flowood_config": options, "amp": amp, "eye_k": eye_k,
                              "parameters": [[n, list(p.shape)] for n, p in model.named_parameters()],
                              "buffers": [[n, list(b.shape)] for n, b in model.named_buffers()],
                              "x": x.tolist(), "loglik": {},
                              "num_parameters": sum(p.numel() for p in model.parameters())}
    for noise, u in noises.items():
        ll_original, z_original = original_loglik(model, x, u)
        ll_ours, z_ours = flowood_loglik(flow, x, u)
        result["loglik"][noise] = ll_original.tolist()
        print(f"{name:32s} {noise:8s} max |ll diff| {float((ll_ours - ll_original).abs().max()):.2e} nats "
              f"(ll {float(ll_original[0]):.3f}); max |z diff| {float((z_ours - z_original).abs().max()):.2e}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", type=Path, required=True, help="checkout of PolinaKirichenko/flows_ood")
    parser.add_argument("--write-fixture", action="store_true", help=f"write {FIXTURE}")
    parser.add_argument("--skip-large", action="store_true", help="skip the CIFAR-10 models (88M, 209M parameters)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    original = import_original(args.original)
    start = time.time()
    print(compare_counts(original).markdown())
    cases = {}
    for name, (options, amp) in CASES.items():
        if args.skip_large and name in LARGE:
            continue
        cases[name] = run_case(original, name, options, amp)
    if args.write_fixture:
        kept = {k: v for k, v in cases.items() if k not in LARGE}  # the tests stay fast; this script checks those
        with gzip.open(FIXTURE, "wt") as f:
            json.dump({"source": "PolinaKirichenko/flows_ood @ 26a920a", "cases": kept}, f)
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size:,} bytes)")
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
