"""Affine couplings (flowood.flows.coupling) with every mask: exact invertibility, a log-determinant equal to a
brute-force Jacobian, and only the transformed part changed, seen through the conditioning part only."""

from __future__ import annotations

import pytest
import torch
from builders import randomise
from layer_checks import check_layer

from flowood.flows import AffineCoupling, make_coupling, make_mask, make_st_net


@pytest.mark.parametrize("kind,shape,index", [
    ("checkerboard", (2, 4, 4), 0), ("checkerboard", (2, 4, 4), 1),
    ("checkerboard_packed", (2, 4, 4), 0), ("checkerboard_packed", (1, 3, 4), 1),
    ("channel", (4, 3, 3), 0), ("channel", (4, 3, 3), 1), ("channel", (3, 2, 2), 0),
    ("horizontal", (1, 4, 4), 0), ("horizontal", (1, 4, 4), 1),
    ("vertical", (1, 4, 4), 1),
    ("cycle", (1, 4, 4), 0), ("cycle", (1, 4, 4), 3), ("cycle", (2, 5, 5), 2),
])
def test_coupling_every_mask(kind, shape, index):
    mask = make_mask(kind, shape, index)
    c = shape[0]
    if mask.is_channel_split:
        cond = c - c // 2 if index % 2 == 0 else c // 2
        net = make_st_net("resnet", cond, 2 * (c - cond), mid_channels=4, num_blocks=1)
    else:
        net = make_st_net("resnet", c, 2 * c, mid_channels=4, num_blocks=1)
    layer = randomise(make_coupling(mask, net))
    check_layer(layer, torch.randn(2, *shape))


def test_tabular_coupling():
    net = make_st_net("mlp", 5, 10, hidden_units=8, num_hidden_layers=1)
    check_layer(randomise(make_coupling(make_mask("tabular", (5,), 1), net)), torch.randn(3, 5))


def test_coupling_only_touches_transformed_part():
    mask = make_mask("cycle", (1, 4, 4), 0)
    net = make_st_net("convnet", 1, 2, mid_channels=4, num_blocks=1)
    layer = randomise(make_coupling(mask, net)).eval()
    x = torch.randn(2, 1, 4, 4)
    y, _ = layer(x)
    untouched = mask.transform == 0
    assert torch.equal(y[:, untouched], x[:, untouched])
    # the output depends only on the conditioning quadrant: changing another untouched part changes nothing
    x2 = x.clone()
    x2[:, :, 2:, :2] += 1.0  # quadrant 3, neither condition (0) nor transform (1)
    y2, _ = layer(x2)
    assert torch.allclose(y2[:, mask.transform.bool()], y[:, mask.transform.bool()])


def test_trace_forward_gives_full_size_s_and_t_for_channel_masks():
    mask = make_mask("channel", (4, 2, 2), 1)
    layer = randomise(make_coupling(mask, make_st_net("convnet", 2, 4, mid_channels=4, num_blocks=1)))
    x = torch.randn(3, 4, 2, 2)
    y, log_det, extras = layer.trace_forward(x)
    assert extras["s"].shape == x.shape and extras["t"].shape == x.shape
    assert extras["s"][:, :2].abs().sum() == 0  # index 1 transforms the second half
    assert torch.allclose(log_det, extras["s"].flatten(1).sum(1))


@pytest.mark.parametrize("index", [0, 1])
def test_packed_checkerboard_transforms_the_checkerboard_pixels_seeing_only_the_others(index):
    shape = (2, 5, 6)
    mask = make_mask("checkerboard_packed", shape, index)
    assert torch.equal(mask.transform, make_mask("checkerboard", shape, index).transform)
    net = make_st_net("convnet", 2, 4, mid_channels=4, num_blocks=1)
    layer = randomise(make_coupling(mask, net))
    x = torch.randn(3, *shape)
    # pack/unpack are inverse permutations, and the packed halves hold exactly the two checkerboard halves
    kept, changed = layer.split(x)
    assert kept.shape == changed.shape == (3, 2, 5, 3)
    assert torch.equal(layer.join(kept, changed), x)
    assert torch.equal(kept.flatten().sort().values, x[:, mask.condition.bool()].flatten().sort().values)
    y, _ = layer(x)
    keep = mask.condition.bool().expand_as(x)
    assert torch.equal(y[keep], x[keep]) and not torch.equal(y[~keep], x[~keep])
    # the st-network sees only the conditioning pixels: changing a transformed pixel changes no s or t
    x2 = x.clone()
    x2[:, ~mask.condition.bool()] += 1.0
    _, _, extras = layer.trace_forward(x)
    _, _, extras2 = layer.trace_forward(x2)
    assert torch.equal(extras["s"], extras2["s"]) and torch.equal(extras["t"], extras2["t"])
    assert (extras["s"][keep] == 0).all()  # full-size s and t are zero where nothing is transformed


def test_the_base_coupling_is_not_built_directly():
    with pytest.raises(TypeError, match="make_coupling"):
        AffineCoupling(make_mask("checkerboard", (1, 4, 4)), make_st_net("convnet", 1, 2, mid_channels=4))
