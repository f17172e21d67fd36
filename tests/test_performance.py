"""Every speed-up leaves the numbers unchanged: log-likelihoods (and training gradients) to 1e-4 relative."""

from __future__ import annotations

import copy

import pytest
import torch

from flowood.flows import build_flow

CONFIGS = {
    "realnvp-resnet-gray": dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=2, num_mid_channels=8),
    "realnvp-resnet-rgb": dict(flow="RealNVP", input_shape=(3, 8, 8), num_blocks=1, num_mid_channels=8),
    "glow-convnet-rgb": dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2, num_coupling_layers_per_scale=2,
                             num_blocks=2, num_mid_channels=8),
    "realnvp-bottleneck": dict(flow="RealNVP", input_shape=(1, 8, 8), st_type="autoencoder", num_mid_channels=8,
                               latent_dim=4),
}


def trained_like(config, seed=0):
    torch.manual_seed(seed)
    flow = build_flow(config)
    flow.train()
    flow.log_prob(torch.randint(0, 256, (16, *flow.input_shape), dtype=torch.uint8))  # ActNorm init, BN stats
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow


def assert_same_gradients(reference, fast, x):
    """One backward pass of bits/dim through each model gives the same parameter gradients."""
    for model in (reference, fast):
        model.zero_grad()
        model.bits_per_dim(x, noise="center").mean().backward()
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def close(a, b, rel=1e-4):
    return bool(((a - b).abs() <= rel * b.abs().clamp_min(1.0)).all())


@pytest.mark.parametrize("name", CONFIGS)
def test_channels_last_gives_the_same_log_likelihoods_and_gradients(name):
    flow = trained_like(CONFIGS[name])
    fast = copy.deepcopy(flow).optimize(channels_last=True)
    x = torch.randint(0, 256, (6, *flow.input_shape), dtype=torch.uint8)
    flow.eval(), fast.eval()
    with torch.inference_mode():
        assert close(fast.log_prob(x, noise="center"), flow.log_prob(x, noise="center"))
    flow.train(), fast.train()
    assert_same_gradients(flow, fast, x)


def test_channels_last_is_the_default_for_image_flows_only():
    image = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4).optimize()
    conv = next(m for m in image.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    build_flow(flow="MAF", input_shape=(5,), num_hidden_units=8).optimize()  # vectors: nothing to change


@pytest.mark.slow
def test_compiled_density_pass_gives_the_same_numbers():
    flow = trained_like(dict(flow="RealNVP", input_shape=(1, 4, 4), num_scales=1, num_blocks=1, num_mid_channels=4))
    flow.eval()
    compiled = copy.deepcopy(flow).optimize(channels_last=False, compile=True)
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    with torch.inference_mode():
        assert close(compiled.log_prob(x, noise="center"), flow.log_prob(x, noise="center"))
    assert_same_gradients(flow, compiled, x)  # training through the compiled pass


@pytest.mark.slow
def test_compiled_density_initialises_eagerly_and_compiles_without_graph_breaks():
    from torch._dynamo.utils import counters
    config = dict(flow="Glow", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=1, num_blocks=1,
                  num_mid_channels=4)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    flow = build_flow(config).optimize(channels_last=False, compile=True)
    x = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    assert not counters["stats"]["unique_graphs"]
    first = flow.log_prob(x, noise="center")  # ActNorm initialises from this batch, eagerly
    assert not counters["stats"]["unique_graphs"]
    assert close(flow.log_prob(x, noise="center"), first)  # compiled from now on
    assert counters["stats"]["unique_graphs"] >= 1
    reloaded = build_flow(config)
    reloaded.load_state_dict(flow.state_dict())  # initialised state: read once (eagerly), then compiled
    reloaded.optimize(channels_last=False, compile=True)
    for _ in range(2):
        assert close(reloaded.log_prob(x, noise="center"), first)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_training_with_channels_last_matches_the_default(tmp_path, fixtures_dir):
    from flowood.training import load_config, train
    results = []
    for cl in (False, True):
        cfg = load_config(None, dict(dataset=f"npz:{fixtures_dir}/fashionmnist-small.npz", num_blocks=1,
                                     num_mid_channels=8, batch_size=32, max_steps=5, max_test_samples=64,
                                     channels_last=cl, out=str(tmp_path / f"cl{cl}")))
        results.append(train(cfg, progress=False).test_bpd)
    assert results[1] == pytest.approx(results[0], rel=1e-4)


_FREED_BLOCK_PROBE = """
import ctypes
import torch
from flowood.allocator import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
applied = tune_allocator()
block = torch.empty(12 << 20)  # 48 MiB: above glibc's largest default mmap threshold (32 MiB)
block.fill_(1.0)
del block
print(int(applied), mallinfo2().fordblks)
"""


def _free_heap_bytes_after_freeing_a_block(env_value):
    import os
    import subprocess
    import sys
    env = dict(os.environ, FLOWOOD_MALLOC_TUNING=env_value)
    out = subprocess.run([sys.executable, "-c", _FREED_BLOCK_PROBE], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return bool(int(out[0])), int(out[1])


def test_allocator_tuning_keeps_freed_blocks_for_reuse():
    import ctypes
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or \
            not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("the allocator tuning applies to Linux with glibc (>= 2.33 for this probe) only")
    applied, kept = _free_heap_bytes_after_freeing_a_block("1")
    not_applied, kept_by_default = _free_heap_bytes_after_freeing_a_block("0")
    assert applied and not not_applied
    assert kept >= 48 << 20           # the freed block stays in the heap, ready for the next step
    assert kept_by_default < 48 << 20  # glibc's default: unmapped, faulted in again next time


def test_cli_tunes_the_allocator_unless_told_not_to(monkeypatch, capsys):
    from flowood import allocator
    from flowood.cli.main import main
    calls = []
    monkeypatch.setattr(allocator, "tune_allocator", lambda enabled=None: calls.append(enabled) or True)
    assert main(["data", "list"]) == 0
    assert calls == [None]
    assert allocator._disabled_by_env() is False
    monkeypatch.setenv("FLOWOOD_MALLOC_TUNING", "0")
    assert allocator._disabled_by_env() is True


@pytest.mark.parametrize("config", [
    dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=2, num_mid_channels=8),  # resnet with BatchNorm
    dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=2, num_mid_channels=8, batchnorm=False),
    dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=2, num_mid_channels=8, batchnorm=False, skip=False),
    dict(flow="RealNVP", input_shape=(1, 8, 8), st_type="resnet_ae", num_blocks=2, num_mid_channels=8, latent_dim=3),
    dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2, num_coupling_layers_per_scale=2, num_blocks=2,
         num_mid_channels=8),
    dict(flow="Glow", input_shape=(1, 8, 8), num_scales=1, num_coupling_layers_per_scale=2, st_type="highway",
         num_mid_channels=8),
    dict(flow="RealNVP", input_shape=(1, 8, 8), st_type="autoencoder", num_mid_channels=8, latent_dim=4),
    dict(flow="RealNVPTabular", input_shape=(6,), num_coupling_layers=2, num_hidden_units=16),
    dict(flow="MAF", input_shape=(6,), num_coupling_layers=2, num_hidden_units=16),
], ids=["resnet-bn", "resnet-nobn", "resnet-nobn-noskip", "resnet_ae", "glow-convnet", "highway", "autoencoder",
        "tabular", "maf"])
def test_in_place_activations_give_the_same_numbers_and_gradients(config, monkeypatch):
    """st-networks apply ReLU/LeakyReLU in place where safe; the same model with every activation out of place
    gives identical log-likelihoods and gradients (and autograd raises no in-place error)."""
    import torch.nn.functional as F
    flow = trained_like(config)
    x = (torch.randint(0, 256, (8, *flow.input_shape), dtype=torch.uint8) if flow.discrete
         else torch.randn(8, *flow.input_shape))

    def run():
        flow.zero_grad()
        lp = flow.log_prob(x, noise="center")
        (-lp.mean()).backward()
        return lp.detach(), [p.grad.clone() for p in flow.parameters() if p.grad is not None]

    lp_in_place, grads_in_place = run()
    relu, leaky = F.relu, F.leaky_relu
    monkeypatch.setattr(F, "relu", lambda t, inplace=False: relu(t, inplace=False))
    monkeypatch.setattr(F, "leaky_relu", lambda t, negative_slope=0.01, inplace=False: leaky(t, negative_slope))
    lp_copy, grads_copy = run()
    assert torch.equal(lp_in_place, lp_copy)
    assert len(grads_in_place) == len(grads_copy) > 0
    for a, b in zip(grads_in_place, grads_copy):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_invertible_1x1_conv_gives_the_same_numbers_on_both_memory_layouts(monkeypatch):
    """On a [B, C, H, W] tensor the 1x1 convolution is a batched matrix product (faster than oneDNN's
    convolution there); on channels-last input it stays a convolution. Outputs, inverses and gradients agree."""
    from flowood.flows import InvertibleConv1x1
    torch.manual_seed(0)
    layer = InvertibleConv1x1(6)
    with torch.no_grad():
        layer.upper.add_(0.1 * torch.randn_like(layer.upper))
    x = torch.randn(3, 6, 5, 4)
    import torch.nn.functional as F
    conv2d, conv_calls = F.conv2d, []
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: conv_calls.append(1) or conv2d(*a, **k))
    results = []
    for inp in (x.clone(), x.contiguous(memory_format=torch.channels_last)):
        inp.requires_grad_(True)
        conv_calls.clear()
        y, log_det = layer(inp)
        assert len(conv_calls) == (0 if inp.is_contiguous() else 1)  # matrix product / convolution
        layer.zero_grad()
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), log_det.detach(), inp.grad.clone(), layer.upper.grad.clone(),
                        layer.inverse(y.detach())))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(results[0][4], x, atol=1e-5)


def test_training_optimizers_are_pytorchs_defaults():
    """``make_optimizer`` builds the optimizers ``flowood train`` offers with PyTorch's default implementation
    (the fused and multi-tensor Adam trained the demo to worse bits/dim), and refuses unknown names."""
    from flowood.training import make_optimizer
    flow = trained_like(CONFIGS["glow-convnet-rgb"])
    for name in ("Adam", "AdamW", "RMSprop", "SGD"):
        opt = make_optimizer(flow.parameters(), name, lr=1e-3)
        assert type(opt).__name__ == name
        assert not opt.defaults.get("fused") and opt.defaults.get("foreach") is None
    assert make_optimizer(flow.parameters(), "SGD").defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(flow.parameters(), "Lion")
