"""Property-based tests (hypothesis) over flow configurations and tensor shapes: any configuration builds or is
refused with a ConfigError, and is a bijection with the right log-likelihood."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

from flowood.flows import ConfigError, build_flow
from flowood.flows.preprocessing import DEQUANTIZATION_LOG_DET

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def perturbed(flow, seed):
    flow.train()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, *flow.input_shape, generator=g)
    flow.log_prob(x) if flow.discrete else flow.log_prob(torch.randn(4, *flow.input_shape, generator=g))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return flow.eval()


def check_bijection(flow, x):
    z, log_det = flow(x)
    assert z.shape == x.shape and log_det.shape == (x.shape[0],)
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    # float32 round-off grows with how far the (randomly perturbed) flow stretches its inputs
    assert (flow.inverse(z) - x).abs().max() < 1e-4 * max(1.0, float(z.abs().max()))
    f64 = flow.double()
    z64, _ = f64(x.double())
    assert (f64.inverse(z64) - x.double()).abs().max() < 1e-8  # in float64 the inverse is exact
    flow.float()
    if x[0].numel() <= 48:  # brute-force Jacobian on small inputs
        f64, x64 = flow.double(), x[:1].double()
        jac = jacobian(lambda v: f64(v.view_as(x64))[0].reshape(-1), x64.reshape(-1))
        assert torch.allclose(f64(x64)[1], torch.linalg.slogdet(jac)[1].view(1), atol=1e-6)
        flow.float()


image_configs = st.fixed_dictionaries({
    "flow": st.sampled_from(["RealNVP", "Glow"]),
    "channels": st.sampled_from([1, 2, 3]),
    "size": st.sampled_from([2, 4, 6, 8]),
    "num_scales": st.integers(1, 3),
    "mask": st.sampled_from([None, "checkerboard", "checkerboard_packed", "horizontal", "vertical", "cycle",
                             "channel"]),
    "st_type": st.sampled_from([None, "resnet", "convnet", "glow_convnet", "highway", "autoencoder", "resnet_ae",
                                "conv_bottleneck"]),
    "weight_norm": st.booleans(),
    "invconv": st.sampled_from(["plain", "lu"]),
    "num_coupling_layers_per_scale": st.sampled_from([None, 1, 2]),
    "batch": st.integers(1, 3),
    "seed": st.integers(0, 1000),
})


@SETTINGS
@given(image_configs)
def test_any_image_config_builds_or_refuses_clearly_and_is_a_bijection(c):
    try:
        flow = build_flow(flow=c["flow"], input_shape=(c["channels"], c["size"], c["size"]),
                          num_scales=c["num_scales"], mask=c["mask"], st_type=c["st_type"],
                          num_coupling_layers_per_scale=c["num_coupling_layers_per_scale"], num_blocks=1,
                          num_mid_channels=4, latent_dim=3, weight_norm=c["weight_norm"], invconv=c["invconv"])
    except ConfigError:
        assume(False)  # an invalid combination is refused with a ConfigError, never another exception
        return
    flow = perturbed(flow, c["seed"])
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.rand(c["batch"], *flow.input_shape, generator=g) * 0.98 + 0.01
    check_bijection(flow, x)
    images = torch.randint(0, 256, (c["batch"], *flow.input_shape), generator=g, dtype=torch.uint8)
    lp = flow.log_prob(images, noise="center")
    z, log_det = flow(flow.dequantize(images, noise="center"))
    expected = flow.prior.log_prob(z) + log_det + DEQUANTIZATION_LOG_DET * flow.num_dims
    assert torch.allclose(lp, expected, rtol=1e-5, atol=1e-3)


@SETTINGS
@given(flow=st.sampled_from(["RealNVPTabular", "MAF"]), dim=st.integers(2, 7), layers=st.integers(1, 3),
       hidden=st.integers(2, 16), depth=st.integers(0, 2), batch=st.integers(1, 4), seed=st.integers(0, 1000))
def test_any_tabular_config_is_a_bijection(flow, dim, layers, hidden, depth, batch, seed):
    model = perturbed(build_flow(flow=flow, input_shape=(dim,), num_coupling_layers=layers, num_hidden_units=hidden,
                                 num_hidden_layers=depth), seed)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)) * 2
    check_bijection(model, x)
    assert torch.allclose(model.log_prob(x), model.prior.log_prob(model(x)[0]) + model(x)[1], atol=1e-4)
