"""Flow configurations (flowood.flows.config): clear errors naming the closest valid value, and a configuration
that rebuilds the identical model."""

from __future__ import annotations

import pytest
import torch
from builders import IMAGE_CONFIGS, ready_flow

from flowood.flows import ConfigError, FlowConfig, build_flow


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


def test_config_roundtrip_rebuilds_identical_model():
    flow = ready_flow(IMAGE_CONFIGS["glow-channel"])
    twin = build_flow(flow.config)
    twin.load_state_dict(flow.state_dict())
    twin.eval()
    x = torch.rand(3, 1, 4, 4)
    assert torch.allclose(twin.log_prob(x, noise="center"), flow.log_prob(x, noise="center"))
