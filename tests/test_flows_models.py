"""Every model configuration: invertibility, log-det against a brute-force Jacobian, likelihood API."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowood.flows import ConfigError, FlowConfig, Glow, RealNVP, RealNVPTabular, build_flow
from flowood.flows.preprocessing import DEQUANTIZATION_LOG_DET

TINY = dict(num_blocks=1, num_mid_channels=4, latent_dim=3)

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
    "realnvp-autoencoder": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="autoencoder", **TINY),
    "realnvp-resnet_ae": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="resnet_ae", num_blocks=2,
                              num_mid_channels=4, latent_dim=3),
    "realnvp-highway-nobn": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="highway", batchnorm=False, **TINY),
    "realnvp-convnet-noskip": dict(flow="RealNVP", input_shape=(1, 4, 4), st_type="convnet", skip=False, **TINY),
    "glow-channel": dict(flow="Glow", input_shape=(1, 4, 4), num_scales=2, num_coupling_layers_per_scale=2, **TINY),
    "glow-highway-rgb": dict(flow="Glow", input_shape=(3, 4, 4), num_scales=1, num_coupling_layers_per_scale=2,
                             st_type="highway", **TINY),
    "glow-checkerboard": dict(flow="Glow", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=2,
                              mask="checkerboard", **TINY),
    "glow-packed-autoencoder": dict(flow="Glow", input_shape=(1, 8, 8), num_scales=1, num_coupling_layers_per_scale=2,
                                    mask="checkerboard_packed", st_type="autoencoder", **TINY),
    "glow-cycle-autoencoder": dict(flow="Glow", input_shape=(1, 8, 8), num_scales=1, num_coupling_layers_per_scale=2,
                                   mask="cycle", st_type="autoencoder", **TINY),
}


def perturb(flow):
    """Move every parameter away from its (identity) initialisation."""
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow


def ready(config):
    flow = build_flow(config)
    flow.train()
    flow.log_prob(torch.rand(8, *flow.input_shape))  # ActNorm data-dependent init
    return perturb(flow).eval()


@pytest.mark.parametrize("name", list(IMAGE_CONFIGS))
def test_image_flow_invertible_and_log_det_exact(name):
    flow = ready(IMAGE_CONFIGS[name])
    x = torch.rand(3, *flow.input_shape) * 0.98 + 0.01
    z, log_det = flow(x)
    assert z.shape == x.shape and log_det.shape == (3,)
    assert (flow.inverse(z) - x).abs().max() < 1e-4
    flow64 = flow.double()
    x64 = x[:1].double()
    jac = jacobian(lambda v: flow64(v.view_as(x64))[0].reshape(-1), x64.reshape(-1))
    expected = torch.linalg.slogdet(jac)[1]
    _, ld = flow64(x64)
    assert torch.allclose(ld, expected.view(1), rtol=1e-6, atol=1e-6), (ld, expected)


@pytest.mark.parametrize("name", ["RealNVPTabular", "MAF"])
def test_tabular_flow_invertible_and_log_det_exact(name):
    flow = ready(dict(flow=name, input_shape=(5,), num_coupling_layers=3, num_hidden_units=8))
    x = torch.randn(4, 5)
    z, _ = flow(x)
    assert (flow.inverse(z) - x).abs().max() < 1e-4
    flow64 = flow.double()
    x64 = x[:1].double()
    jac = jacobian(lambda v: flow64(v.view(1, 5))[0].reshape(-1), x64.reshape(-1))
    assert torch.allclose(flow64(x64)[1], torch.linalg.slogdet(jac)[1].view(1), atol=1e-8)


def test_log_prob_is_prior_plus_log_det_plus_dequantization():
    flow = ready(IMAGE_CONFIGS["glow-channel"])
    k = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    x = k.float() / 255
    xc = (k.float() + 0.5) / 256
    z, log_det = flow(xc)
    prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    expected = prior + log_det + 16 * DEQUANTIZATION_LOG_DET
    assert torch.allclose(flow.log_prob(x, noise="center"), expected, atol=1e-4)
    assert torch.allclose(flow.log_prob(k, noise="center"), expected, atol=1e-4)  # uint8 accepted
    bpd = flow.bits_per_dim(x, noise="center")
    assert torch.allclose(bpd, -expected / (16 * math.log(2)), atol=1e-5)


def test_untrained_realnvp_is_near_8_bits_per_dim():
    # identity couplings + logit on uniform noise: about 8 bits/dim, the sanity check of the literature
    flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4).eval()
    bpd = flow.bits_per_dim(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)).mean()
    assert 7.0 < float(bpd) < 9.5


def test_sample_shapes_and_range():
    flow = ready(IMAGE_CONFIGS["realnvp-checkerboard-2scales"])
    for t in (0.5, 1.0):
        s = flow.sample(6, temperature=t)
        assert s.shape == (6, 1, 4, 4)
        assert s.min() >= 0 and s.max() <= 1
        assert torch.allclose(s * 255, torch.round(s * 255), atol=1e-4)  # on the 8-bit grid
    g = torch.Generator().manual_seed(1)
    a = flow.sample(2, generator=g)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(a, flow.sample(2, generator=g))
    tab = ready(dict(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=8))
    assert tab.sample(3).shape == (3, 4)


def test_trace_records_every_step_and_latents_per_scale():
    flow = ready(IMAGE_CONFIGS["realnvp-checkerboard-2scales"])
    x = torch.rand(2, 1, 4, 4)
    tr = flow.trace(x)
    names = [r.name for r in tr.records]
    assert names[0] == "logit" and "scale0.split" in names
    assert len(tr.records) == len(flow.steps) + 1
    couplings = [r for r in tr.records if r.kind == "coupling"]
    assert len(couplings) == len(flow.coupling_layers()) == 3 + 3 + 4
    for r in couplings:
        assert r.extras["s"].shape == r.extras["input"].shape == r.output.shape
    assert set(tr.latents) == {"scale0", "scale1"}
    assert tr.latents["scale0"].shape == (2, 2, 2, 2) and tr.latents["scale1"].shape == (2, 2, 2, 2)
    assert torch.allclose(tr.log_prob, flow.log_prob(x, noise="center"), atol=1e-5)
    total = sum(r.log_det for r in tr.records)
    assert torch.allclose(total, tr.log_det, atol=1e-5)


def test_default_realnvp_matches_paper_architecture():
    flow = RealNVP((1, 28, 28), num_blocks=1)
    names = flow.step_names
    assert names[:3] == ["scale0.coupling0", "scale0.coupling1", "scale0.coupling2"]
    assert sum(n.startswith("scale1.coupling") for n in names) == 4
    assert sum("channel_coupling" in n for n in names) == 3
    # width doubles after the squeeze
    first = flow.steps[0].st_net.in_conv.out_channels
    later = flow.steps[names.index("scale1.coupling0")].st_net.in_conv.out_channels
    assert (first, later) == (64, 128)
    glow = Glow((1, 28, 28), num_scales=2, num_coupling_layers_per_scale=3, num_blocks=1, num_mid_channels=8)
    assert sum(n.endswith(".coupling") for n in glow.step_names) == 6


@pytest.mark.parametrize("bad,match", [
    (dict(flow="RealNVPP"), "did you mean 'RealNVP'"),
    (dict(flow="RealNVP", st_type="resnett"), "did you mean 'resnet'"),
    (dict(flow="RealNVP", mask="channel"), "does not work with RealNVP"),
    (dict(flow="RealNVP", num_scales=4, input_shape=(1, 28, 28)), "divisible by 8"),
    (dict(flow="Glow", num_scales=3, input_shape=(1, 28, 28)), "divisible by 8"),
    (dict(flow="RealNVP", num_blocks=-1), "non-negative"),
    (dict(flow="RealNVP", num_mid_channels=0), "positive"),
    (dict(flow="RealNVPTabular", input_shape=(1, 28, 28)), r"\(D,\)"),
    (dict(flow="RealNVP", input_shape=(10,)), "RealNVPTabular"),
])
def test_config_errors_are_clear(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_flow(bad)


def test_unknown_config_key_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'num_blocks'"):
        FlowConfig.from_dict({"num_block": 3})


def test_bad_inputs_raise_clear_errors():
    flow = RealNVP((1, 4, 4), **TINY).eval()
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\)"):
        flow.log_prob(torch.rand(2, 3, 4, 4))
    x = torch.rand(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.log_prob(torch.rand(2, 1, 4, 4) * 255)
    with pytest.raises(TypeError):
        flow.log_prob([[0.0]])


def test_config_roundtrip_rebuilds_identical_model():
    flow = ready(IMAGE_CONFIGS["glow-channel"])
    twin = build_flow(flow.config)
    twin.load_state_dict(flow.state_dict())
    twin.eval()
    x = torch.rand(3, 1, 4, 4)
    assert torch.allclose(twin.log_prob(x, noise="center"), flow.log_prob(x, noise="center"))


def test_realnvp_tabular_helper():
    flow = RealNVPTabular(6, num_coupling_layers=2, num_hidden_units=8)
    assert not flow.discrete and flow.input_shape == (6,)


def test_maf_helper_and_config_name():
    from flowood.flows import MAF
    flow = MAF(6, num_coupling_layers=2, num_hidden_units=8)
    assert flow.config["flow"] == "MAF" and not flow.discrete
    kinds = [getattr(s, "kind", "") for s in flow.steps]
    assert kinds == ["actnorm", "autoregressive", "permutation", "autoregressive"]
    with pytest.raises(ConfigError, match="vectors"):
        build_flow(flow="MAF", input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="MAF"):
        build_flow(flow="MAFF", input_shape=(4,))


def test_api_inputs_of_another_dtype_or_outside_the_unit_interval_raise_value_errors():
    flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4, num_scales=1)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="expected torch.float32 inputs .* got torch.float64"):
        flow.log_prob(x.double())  # used to be a raw "mixed dtype" RuntimeError from a convolution
    with pytest.raises(ValueError, match="open interval \\(0, 1\\)"):
        flow(x * 3 - 1)  # used to return NaN silently
    with pytest.raises(ValueError, match="score 8-bit images with log_prob"):
        flow(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8))
    z, log_det = flow(x.clamp(0.01, 0.99))
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    tabular = RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8)
    with pytest.raises(ValueError, match="float64"):
        tabular.log_prob(torch.randn(3, 4, dtype=torch.float64))
    assert tabular.double().log_prob(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64
