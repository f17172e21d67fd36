"""Mixed precision (flowood.flows.precision): st-networks in bf16, the bijection and the log-determinant in fp32,
the inverse exact."""

from __future__ import annotations

import pytest
import torch

from flowood.flows import build_flow
from flowood.flows.coupling import AffineCoupling
from flowood.flows.layers import ActNorm, InvertibleConv1x1
from flowood.flows.precision import parse_precision

CONFIGS = {
    "realnvp": dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=8),
    "glow": dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2, num_coupling_layers_per_scale=2, num_blocks=2,
                 num_mid_channels=8),
    "maf": dict(flow="MAF", input_shape=(6,), num_coupling_layers=2, num_hidden_units=16),
}


def trained_like(name):
    torch.manual_seed(0)
    flow = build_flow(CONFIGS[name])
    flow.log_prob(inputs(flow))  # ActNorm initialisation
    with torch.no_grad():  # away from the identity start, so st-networks matter
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow.eval()


def inputs(flow, n=8):
    g = torch.Generator().manual_seed(1)
    if flow.discrete:
        return torch.randint(0, 256, (n, *flow.input_shape), dtype=torch.uint8, generator=g)
    return torch.randn((n, *flow.input_shape), generator=g)


def dtypes_seen(flow, run):
    """Output dtypes of st-network modules and of the other flow layers during ``run()``."""
    seen = {"st": set(), "layers": set(), "log_det": set()}
    hooks = []
    for module in flow.modules():
        if isinstance(module, AffineCoupling):
            hooks.append(module.st_net.register_forward_hook(lambda m, i, o: seen["st"].add(o.dtype)))
        if isinstance(module, (AffineCoupling, ActNorm, InvertibleConv1x1)):
            def record(m, i, o):
                seen["layers"].add(o[0].dtype)
                seen["log_det"].add(o[1].dtype)
            hooks.append(module.register_forward_hook(record))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_st_networks_run_in_bf16_and_everything_else_in_fp32(name):
    flow = trained_like(name).mixed_precision("bf16")
    x = inputs(flow)
    out = {}
    seen = dtypes_seen(flow, lambda: out.setdefault("log_prob", flow.log_prob(x, noise="center")))
    assert seen["st"] == {torch.bfloat16}
    assert seen["layers"] == {torch.float32} and seen["log_det"] == {torch.float32}
    assert out["log_prob"].dtype == torch.float32


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixed_precision_changes_bits_per_dim_by_rounding_only(name):
    flow = trained_like(name)
    x = inputs(flow)
    with torch.no_grad():
        full = flow.log_prob(x, noise="center")
        half = flow.mixed_precision("bf16").log_prob(x, noise="center")
        flow.mixed_precision("fp32")
        again = flow.log_prob(x, noise="center")
    assert not torch.equal(full, half)  # the st-networks really ran in bf16
    assert torch.allclose(half, full, rtol=2e-2, atol=0.05)
    assert torch.equal(again, full)  # and switching back restores fp32 exactly


@pytest.mark.parametrize("name", list(CONFIGS))
def test_inverse_is_exact_under_mixed_precision(name):
    flow = trained_like(name).mixed_precision("bf16")
    x = torch.rand(4, *flow.input_shape) * 0.9 + 0.05 if flow.discrete else inputs(flow, 4)
    with torch.no_grad():
        z, _ = flow(x)
        back = flow.inverse(z)
    assert (back - x).abs().max() < 1e-4


def test_an_enclosing_autocast_is_narrowed_to_the_st_networks():
    flow = trained_like("glow")
    x = inputs(flow)
    with torch.no_grad():
        explicit = flow.mixed_precision("bf16").log_prob(x, noise="center")
        flow.mixed_precision(None)
        out = {}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seen = dtypes_seen(flow, lambda: out.setdefault("lp", flow.log_prob(x, noise="center")))
    assert seen["st"] == {torch.bfloat16} and seen["layers"] == {torch.float32}
    assert torch.equal(out["lp"], explicit)


def test_mixed_precision_trains_with_gradients_in_fp32():
    flow = trained_like("realnvp").train().mixed_precision("bf16")
    flow.bits_per_dim(inputs(flow)).mean().backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_precision_names():
    assert parse_precision("bf16") is torch.bfloat16 and parse_precision("bf16-mixed") is torch.bfloat16
    assert parse_precision("fp16") is torch.float16 and parse_precision("16-mixed") is torch.float16
    assert parse_precision("fp32") is None and parse_precision(None) is None and parse_precision("32-true") is None
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        parse_precision("fp8")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        parse_precision(torch.float64)
