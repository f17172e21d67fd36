"""st-networks (flowood.flows.nets): every image st-network inside a coupling gives an exact bijection, and the
in-place activations give the same numbers and gradients as out-of-place ones."""

from __future__ import annotations

import pytest
import torch
from builders import randomise, trained_like
from layer_checks import check_layer

from flowood.flows import AffineCoupling, make_mask, make_st_net
from flowood.flows.nets import ST_TYPES


@pytest.mark.parametrize("st_type", [t for t in ST_TYPES if t != "mlp"])
def test_coupling_every_image_st_network(st_type):
    shape = (2, 8, 8)
    net = make_st_net(st_type, 2, 4, (8, 8), mid_channels=4, num_blocks=2, latent_dim=3)
    layer = randomise(AffineCoupling(make_mask("checkerboard", shape, 0), net))
    check_layer(layer, torch.randn(2, *shape))


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
    for a, b in zip(grads_in_place, grads_copy, strict=False):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
