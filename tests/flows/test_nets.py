"""st-networks (flowood.flows.nets): every image st-network inside a coupling gives an exact bijection, and the
in-place activations give the same numbers and gradients as out-of-place ones."""

from __future__ import annotations

import pytest
import torch
from builders import randomise, trained_like
from layer_checks import check_layer

from flowood.flows import make_coupling, make_mask, make_st_net
from flowood.flows.nets import image_st_types, st_net_options


@pytest.mark.parametrize("st_type", image_st_types())
def test_coupling_every_image_st_network(st_type):
    side = 14 if st_type == "autoencoder" else 8  # the paper's autoencoder works on sides of 14 and more
    shape = (2, side, side)
    offered = dict(spatial=(side, side), mid_channels=4, num_blocks=2, latent_dim=3)
    net = make_st_net(st_type, 2, 4, **st_net_options(st_type, offered))
    layer = randomise(make_coupling(make_mask("checkerboard", shape, 0), net))
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
    dict(flow="RealNVP", input_shape=(1, 14, 14), num_scales=1, num_coupling_layers_per_scale=2,
         st_type="autoencoder", latent_dim=4),
    dict(flow="RealNVP", input_shape=(1, 8, 8), st_type="conv_bottleneck", num_mid_channels=8, latent_dim=4),
    dict(flow="RealNVPTabular", input_shape=(6,), num_coupling_layers=2, num_hidden_units=16),
    dict(flow="MAF", input_shape=(6,), num_coupling_layers=2, num_hidden_units=16),
], ids=["resnet-bn", "resnet-nobn", "resnet-nobn-noskip", "resnet_ae", "glow-convnet", "highway", "autoencoder",
        "conv_bottleneck", "tabular", "maf"])
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


def test_weight_norm_convolution_starts_as_the_plain_convolution_and_separates_size_from_direction():
    from flowood.flows.nets import WeightNormConv2d
    torch.manual_seed(3)
    plain = torch.nn.Conv2d(3, 5, 3, padding=1)
    torch.manual_seed(3)
    wn = WeightNormConv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(wn(x), plain(x), atol=1e-6)
    assert {n for n, _ in wn.named_parameters()} == {"weight_g", "weight_v", "bias"}
    assert wn.weight_g.shape == (5, 1, 1, 1)
    with torch.no_grad():
        wn.weight_v.mul_(7.0)  # the direction's length does not matter
        assert torch.allclose(wn(x), plain(x), atol=1e-5)
        wn.weight_g.mul_(2.0)
        assert torch.allclose(wn(x) - wn.bias.view(1, -1, 1, 1), 2 * (plain(x) - plain.bias.view(1, -1, 1, 1)),
                              atol=1e-5)
    assert wn.zero_()(x).abs().max() == 0  # init_zeros: an exact zero that still learns through g


def test_the_rescale_is_g_times_the_sign_of_v():
    from flowood.flows.coupling import Rescale
    rescale = Rescale((3, 1, 1))
    with torch.no_grad():
        rescale.weight_g.copy_(torch.tensor([2.0, 0.5, 1.5]).view(3, 1, 1))
        rescale.weight_v.copy_(torch.tensor([-4.0, 0.1, 3.0]).view(3, 1, 1))
    assert rescale().flatten().tolist() == pytest.approx([-2.0, 0.5, 1.5])
    assert Rescale((4,))().tolist() == [1.0] * 4
    vector = Rescale((3,))  # the tabular flows': each entry is its own weight-norm group (torch's weight_norm, dim 0)
    with torch.no_grad():
        vector.weight_g.copy_(rescale.weight_g.flatten())
        vector.weight_v.copy_(rescale.weight_v.flatten())
    assert vector().tolist() == pytest.approx([-2.0, 0.5, 1.5])
    torch.testing.assert_close(vector(), torch._weight_norm(vector.weight_v.view(3, 1), vector.weight_g.view(3, 1),
                                                            0).view(3))


def test_the_input_is_doubled_after_its_batchnorm_only_for_checkerboard_masks():
    from flowood.flows import build_flow
    flow = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4)
    doubled = {name: layer.st_net.double_after_norm for name, layer in flow.coupling_layers()}
    assert all(v for n, v in doubled.items() if "channel" not in n)
    assert not any(v for n, v in doubled.items() if "channel" in n)
    cycle = build_flow(flow="RealNVPCycleMask", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4)
    assert not any(layer.st_net.double_after_norm for _, layer in cycle.coupling_layers())
    nobn = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4, batchnorm=False)
    assert not any(layer.st_net.double_after_norm for _, layer in nobn.coupling_layers())


def test_which_st_networks_start_at_zero():
    """init_zeros (off in the paper's commands) zeroes the output layer; Glow's networks always start at zero."""
    x = torch.randn(2, 2, 8, 8)
    for st_type in ("resnet", "convnet", "conv_bottleneck"):
        options = st_net_options(st_type, dict(spatial=(8, 8), mid_channels=4, num_blocks=1, latent_dim=3))
        assert make_st_net(st_type, 2, 4, init_zeros=True, **options).eval()(x).abs().max() == 0, st_type
        assert make_st_net(st_type, 2, 4, **options).eval()(x).abs().max() > 0, st_type
    for st_type in ("highway", "glow_convnet"):
        options = st_net_options(st_type, dict(mid_channels=4, num_blocks=1))
        assert make_st_net(st_type, 2, 4, **options).eval()(x).abs().max() == 0, st_type


def test_the_papers_autoencoder_keeps_its_shape_and_refuses_sizes_it_cannot_rebuild():
    from flowood.options import ConfigError
    for side in (14, 16, 28, 32):
        net = make_st_net("autoencoder", 2, 4, spatial=(side, side), latent_dim=5)
        assert net(torch.randn(3, 2, side, side)).shape == (3, 4, side, side)
        assert net.fc_z.out_features == 5
    with pytest.raises(ConfigError, match="conv_bottleneck"):
        make_st_net("autoencoder", 2, 4, spatial=(8, 8))
    with pytest.raises(ConfigError, match="num_blocks >= 2"):
        make_st_net("resnet_ae", 2, 4, spatial=(8, 8), num_blocks=1)


def test_a_new_st_network_is_one_class_and_one_registry_line():
    """Registered from outside the package, a network becomes a valid `st_type` of every image flow; each network
    takes only the options it declares."""
    from flowood.flows import ST_NETWORKS, ConfigError, build_flow, register_st_net

    @register_st_net("two_convs")
    class TwoConvST(torch.nn.Sequential):
        """Two 3x3 convolutions with a ReLU between them."""

        def __init__(self, in_channels, out_channels, mid_channels=8):
            super().__init__(torch.nn.Conv2d(in_channels, mid_channels, 3, padding=1), torch.nn.ReLU(),
                             torch.nn.Conv2d(mid_channels, out_channels, 3, padding=1))

    try:
        assert "two_convs" in image_st_types()
        flow = build_flow(flow="RealNVP", input_shape=(1, 8, 8), st_type="two_convs", num_mid_channels=4,
                          num_blocks=7, latent_dim=3)  # options two_convs does not declare are not passed to it
        nets = [layer.st_net for _, layer in flow.coupling_layers()]
        assert all(isinstance(net, TwoConvST) for net in nets)
        assert nets[0][0].out_channels == 4 and nets[-1][0].out_channels == 8  # mid_channels doubles after squeeze
        for _, layer in flow.coupling_layers():
            randomise(layer)
        check_layer(flow.coupling_layers()[0][1], torch.randn(2, 1, 8, 8))
        with pytest.raises(ConfigError, match="does not take num_blocks; it takes mid_channels"):
            make_st_net("two_convs", 1, 2, num_blocks=3)
    finally:
        ST_NETWORKS.unregister("two_convs")
    with pytest.raises(ConfigError, match="unknown st_type 'two_convs'"):
        build_flow(flow="RealNVP", input_shape=(1, 8, 8), st_type="two_convs")
