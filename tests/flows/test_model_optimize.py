"""FlowModel.optimize: every speed-up (channels-last memory, torch.compile) leaves the numbers unchanged:
log-likelihoods and training gradients to 1e-4 relative."""

from __future__ import annotations

import copy

import pytest
import torch
from builders import SPEED_CONFIGS, tiny_realnvp, trained_like

from flowood.flows import build_flow
from flowood.flows.nets import WeightNormConv2d


def assert_same_gradients(reference, fast, x):
    """One backward pass of bits/dim through each model gives the same parameter gradients."""
    for model in (reference, fast):
        model.zero_grad()
        model.bits_per_dim(x, noise="center").mean().backward()
    for (name, p), q in zip(reference.named_parameters(), fast.parameters(), strict=False):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def close(a, b, rel=1e-4):
    return bool(((a - b).abs() <= rel * b.abs().clamp_min(1.0)).all())


@pytest.mark.parametrize("name", SPEED_CONFIGS)
def test_channels_last_gives_the_same_log_likelihoods_and_gradients(name):
    flow = trained_like(SPEED_CONFIGS[name])
    fast = copy.deepcopy(flow).optimize(channels_last=True)
    x = torch.randint(0, 256, (6, *flow.input_shape), dtype=torch.uint8)
    flow.eval(), fast.eval()
    with torch.inference_mode():
        assert close(fast.log_prob(x, noise="center"), flow.log_prob(x, noise="center"))
    flow.train(), fast.train()
    assert_same_gradients(flow, fast, x)


def test_channels_last_is_the_default_for_image_flows_only():
    image = tiny_realnvp().optimize()
    conv = next(m for m in image.modules() if isinstance(m, WeightNormConv2d) and m.weight_v.shape[-1] > 1)
    assert conv.weight_v.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # the normalised weight keeps the format
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
