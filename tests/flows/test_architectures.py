"""Every architecture (flowood.flows.architectures): each image and tabular configuration is a bijection with a
log-determinant equal to a brute-force Jacobian; RealNVP and Glow are built as in the paper; the helpers'
configurations."""

from __future__ import annotations

import pytest
import torch
from builders import IMAGE_CONFIGS, ready_flow
from torch.autograd.functional import jacobian

from flowood.flows import ConfigError, Glow, RealNVP, RealNVPTabular, build_flow


@pytest.mark.parametrize("name", list(IMAGE_CONFIGS))
def test_image_flow_invertible_and_log_det_exact(name):
    flow = ready_flow(IMAGE_CONFIGS[name])
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
    flow = ready_flow(dict(flow=name, input_shape=(5,), num_coupling_layers=3, num_hidden_units=8))
    x = torch.randn(4, 5)
    z, _ = flow(x)
    assert (flow.inverse(z) - x).abs().max() < 1e-4
    flow64 = flow.double()
    x64 = x[:1].double()
    jac = jacobian(lambda v: flow64(v.view(1, 5))[0].reshape(-1), x64.reshape(-1))
    assert torch.allclose(flow64(x64)[1], torch.linalg.slogdet(jac)[1].view(1), atol=1e-8)


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


def test_realnvp_tabular_helper():
    flow = RealNVPTabular(6, num_coupling_layers=2, num_hidden_units=8)
    assert not flow.discrete and flow.input_shape == (6,)


def test_maf_helper_and_config_name():
    from flowood.flows import MAF
    flow = MAF(6, num_coupling_layers=2, num_hidden_units=8)
    assert flow.config["flow"] == "MAF" and not flow.discrete
    kinds = [getattr(s, "kind", "") for s in flow.steps]
    assert kinds == ["standardize", "actnorm", "autoregressive", "permutation", "autoregressive"]
    with pytest.raises(ConfigError, match="vectors"):
        build_flow(flow="MAF", input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="MAF"):
        build_flow(flow="MAFF", input_shape=(4,))


def test_a_new_flow_is_one_class_and_one_registry_line():
    """A RegisteredFlow subclass registered from outside the package is a valid `flow` of FlowConfig and
    build_flow, with its own defaults and options."""
    from flowood.flows import FLOWS, ConfigError, RegisteredFlow, register_flow
    from flowood.flows.layers import ActNorm

    @register_flow("ActNormOnly")
    class ActNormOnly(RegisteredFlow):
        """Two ActNorm layers: a diagonal Gaussian, the simplest flow."""

        inputs = "vectors"
        options = ("actnorm",)

        @classmethod
        def build_steps(cls, config):
            (d,) = config.input_shape
            return [("norm0", ActNorm(d)), ("norm1", ActNorm(d))]

    try:
        flow = build_flow(flow="actnormonly", input_shape=(3,))
        assert type(flow) is ActNormOnly and flow.config["flow"] == "ActNormOnly"
        assert ActNormOnly(3).log_prob(torch.randn(5, 3)).shape == (5,)
        with pytest.raises(ConfigError, match="ActNormOnly does not take num_blocks; it takes actnorm"):
            ActNormOnly(3, num_blocks=2)
    finally:
        FLOWS.unregister("ActNormOnly")
    with pytest.raises(ConfigError, match="unknown flow"):
        build_flow(flow="ActNormOnly", input_shape=(3,))
