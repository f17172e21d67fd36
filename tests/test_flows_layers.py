"""Every flow layer: exact invertibility and a log-determinant equal to a brute-force Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from flowood.flows import (ActNorm, AffineCoupling, InvertibleConv1x1, LogitTransform, Squeeze, dequantize,
                           make_mask, make_st_net, quantize)
from flowood.flows.nets import ST_TYPES


def brute_force_log_det(layer, x):
    """log |det J| of ``layer`` at each sample of ``x`` from the full autograd Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        jac = jacobian(lambda v: layer(v.view_as(xi))[0].reshape(-1), xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_layer(layer, x, atol=1e-4):
    layer = layer.double().eval()
    x = x.double()
    y, log_det = layer(x)
    assert log_det.shape == (x.shape[0],)
    assert torch.allclose(layer.inverse(y), x, atol=atol), "inverse(forward(x)) != x"
    expected = brute_force_log_det(layer, x)
    assert torch.allclose(log_det, expected, atol=1e-6, rtol=1e-6), (log_det, expected)
    # float32 invertibility to 1e-4, the library's promise
    layer32 = layer.float()
    x32 = x.float()
    y32, _ = layer32(x32)
    assert (layer32.inverse(y32) - x32).abs().max() < 1e-4


def randomise(module):
    """Give zero-initialised output layers random weights so the layer is not the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def test_logit_transform():
    check_layer(LogitTransform(0.05), torch.rand(3, 1, 3, 3) * 0.98 + 0.01)


def test_logit_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(0.6)


def test_actnorm_image_and_vector():
    check_layer(randomise(ActNorm(2)), torch.randn(3, 2, 3, 3))
    check_layer(randomise(ActNorm(4)), torch.randn(3, 4))


def test_actnorm_data_dependent_init():
    layer = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1) + torch.tensor([3.0, -2.0, 0.5]).view(1, 3, 1, 1)
    y, _ = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    # a second batch must not re-initialise
    bias = layer.bias.detach().clone()
    layer(torch.randn(8, 3, 5, 5))
    assert torch.equal(bias, layer.bias.detach())
    # loading a state that is not initialised yet makes the next batch initialise again
    layer.load_state_dict(ActNorm(3).state_dict())
    y, _ = layer(x)
    assert bool(layer.initialized) and torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


@pytest.mark.parametrize("config", [
    dict(flow="Glow", input_shape=(1, 8, 8), num_scales=2, num_coupling_layers_per_scale=2, num_blocks=1,
         num_mid_channels=4),
    dict(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4),
    dict(flow="MAF", input_shape=(6,), num_hidden_units=8),
], ids=["glow", "realnvp", "maf"])
def test_flow_passes_read_no_tensor_values_on_the_host_once_initialised(config):
    """A value read from a tensor (``bool(t)``, ``.item()``) makes a GPU wait for the host; once ActNorm is
    initialised, density passes (forward and backward) and sampling read none."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from flowood.flows import build_flow

    reads = []

    class RecordReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    flow = build_flow(config)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8) if flow.discrete else torch.randn(4, 6)
    flow.log_prob(x)  # initialises ActNorm
    with RecordReads():
        flow.log_prob(x, validate=False).sum().backward()
        with torch.no_grad():
            flow.sample(2)
    assert reads == []


def test_actnorm_init_survives_state_dict():
    layer = ActNorm(2)
    layer(torch.randn(8, 2, 2, 2) + 4)
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)
    assert torch.equal(fresh.bias, layer.bias)


def test_invertible_conv_1x1():
    check_layer(randomise(InvertibleConv1x1(4)), torch.randn(2, 4, 3, 3))
    conv = randomise(InvertibleConv1x1(5)).double()
    w = conv.weight()
    assert torch.allclose(conv.inverse_weight() @ w, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(torch.linalg.slogdet(w)[1], conv.log_s.sum(), atol=1e-10)


def test_squeeze_roundtrip_and_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, log_det = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # one 2x2 patch -> channels
    assert torch.equal(Squeeze().inverse(y), x)
    assert log_det.abs().sum() == 0
    check_layer(Squeeze(), torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.randn(1, 1, 3, 4))


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
        net = make_st_net("resnet", cond, 2 * (c - cond), shape[1:], mid_channels=4, num_blocks=1)
    else:
        net = make_st_net("resnet", c, 2 * c, shape[1:], mid_channels=4, num_blocks=1)
    layer = randomise(AffineCoupling(mask, net))
    check_layer(layer, torch.randn(2, *shape))


@pytest.mark.parametrize("st_type", [t for t in ST_TYPES if t != "mlp"])
def test_coupling_every_image_st_network(st_type):
    shape = (2, 8, 8)
    net = make_st_net(st_type, 2, 4, (8, 8), mid_channels=4, num_blocks=2, latent_dim=3)
    layer = randomise(AffineCoupling(make_mask("checkerboard", shape, 0), net))
    check_layer(layer, torch.randn(2, *shape))


def test_tabular_coupling():
    net = make_st_net("mlp", 5, 10, mid_channels=8, num_blocks=1)
    check_layer(randomise(AffineCoupling(make_mask("tabular", (5,), 1), net)), torch.randn(3, 5))


def test_coupling_only_touches_transformed_part():
    mask = make_mask("cycle", (1, 4, 4), 0)
    net = make_st_net("convnet", 1, 2, mid_channels=4, num_blocks=1)
    layer = randomise(AffineCoupling(mask, net)).eval()
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
    layer = randomise(AffineCoupling(mask, make_st_net("convnet", 2, 4, mid_channels=4, num_blocks=1)))
    x = torch.randn(3, 4, 2, 2)
    y, log_det, extras = layer.trace_forward(x)
    assert extras["s"].shape == x.shape and extras["t"].shape == x.shape
    assert extras["s"][:, :2].abs().sum() == 0  # index 1 transforms the second half
    assert torch.allclose(log_det, extras["s"].flatten(1).sum(1))


def test_masks_cover_as_documented():
    cb = make_mask("checkerboard", (1, 2, 2))
    assert cb.condition[0].tolist() == [[1, 0], [0, 1]]
    for q in range(4):
        m = make_mask("cycle", (1, 4, 4), q)
        assert m.condition.sum() == 4 and m.transform.sum() == 4
        assert (m.condition * m.transform).sum() == 0
    # cycle order: 0 -> 1 -> 2 -> 3 -> 0, quadrants TL, TR, BR, BL
    m = make_mask("cycle", (1, 4, 4), 0)
    assert m.condition[0, 0, 0] == 1 and m.transform[0, 0, 3] == 1
    h = make_mask("horizontal", (1, 4, 2), 0)
    assert h.condition[0, :2].sum() == 4 and h.transform[0, 2:].sum() == 4
    ch = make_mask("channel", (4, 1, 1), 0)
    assert ch.transform[:, 0, 0].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("checkerbord", (1, 2, 2))
    with pytest.raises(ValueError, match="at least 2 channels"):
        make_mask("channel", (1, 2, 2))


def test_dequantize_and_quantize_roundtrip():
    k = torch.randint(0, 256, (4, 1, 5, 5), dtype=torch.uint8)
    x = k.float() / 255
    for noise in ("uniform", "center"):
        xd = dequantize(x, noise=noise)
        assert ((xd >= 0) & (xd < 1)).all()
        assert torch.equal(torch.round(quantize(xd) * 255).to(torch.uint8), k)
    assert torch.equal(dequantize(k, noise="center"), (k.float() + 0.5) / 256)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(dequantize(x, generator=g1), dequantize(x, generator=g2))
    with pytest.raises(ValueError, match="noise"):
        dequantize(x, noise="gaussian")


def test_logit_log_det_formula_matches_hand_computation():
    alpha = 0.05
    x = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    _, log_det = LogitTransform(alpha).double()(x)
    s = alpha + (1 - 2 * alpha) * x
    expected = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log(1 - s)).sum()
    assert torch.allclose(log_det, expected.view(1))


@pytest.mark.parametrize("dim,hidden,layers", [(2, 4, 0), (5, 3, 1), (6, 16, 2)])
def test_maf_layer_invertible_and_log_det_exact(dim, hidden, layers):
    from flowood.flows.autoregressive import MaskedAffineAutoregressive
    check_layer(randomise(MaskedAffineAutoregressive(dim, hidden, layers)), torch.randn(3, dim))


def test_made_is_autoregressive():
    """Output i (scale and shift) depends on inputs < i only: its Jacobian is strictly lower triangular."""
    from flowood.flows.autoregressive import MADE
    made = randomise(MADE(5, hidden_units=7, num_hidden_layers=1)).double()
    jac = jacobian(made, torch.randn(1, 5, dtype=torch.float64))[0, :, 0, :]  # [2D, D]
    for block in (jac[:5], jac[5:]):
        assert torch.all(block.triu() == 0)
        assert block.tril(-1).abs().sum() > 0  # and it does use the earlier ones


def test_reverse_permutation():
    from flowood.flows.autoregressive import ReversePermutation
    check_layer(ReversePermutation(), torch.randn(3, 4))


@pytest.mark.parametrize("index", [0, 1])
def test_packed_checkerboard_transforms_the_checkerboard_pixels_seeing_only_the_others(index):
    shape = (2, 5, 6)
    mask = make_mask("checkerboard_packed", shape, index)
    assert torch.equal(mask.transform, make_mask("checkerboard", shape, index).transform)
    net = make_st_net("convnet", 2, 4, mid_channels=4, num_blocks=1)
    layer = randomise(AffineCoupling(mask, net))
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


def test_packed_checkerboard_needs_an_even_width():
    with pytest.raises(ValueError, match="even width"):
        make_mask("checkerboard_packed", (1, 4, 5))
