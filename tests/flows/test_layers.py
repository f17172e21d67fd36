"""Flow layers (flowood.flows.layers): ActNorm, Standardize, the invertible 1x1 convolution and squeeze are exactly
invertible, with a log-determinant equal to a brute-force Jacobian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import randomise
from layer_checks import check_layer

from flowood.flows import ActNorm, InvertibleConv1x1, Squeeze


def test_actnorm_image_and_vector():
    check_layer(randomise(ActNorm(2)), torch.randn(3, 2, 3, 3))
    check_layer(randomise(ActNorm(4)), torch.randn(3, 4))


def test_actnorm_data_dependent_init():
    layer = ActNorm(3)
    scale, shift = torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1), torch.tensor([3.0, -2.0, 0.5]).view(1, 3, 1, 1)
    x = torch.randn(64, 3, 5, 5) * scale + shift
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


def test_actnorm_init_survives_state_dict():
    layer = ActNorm(2)
    layer(torch.randn(8, 2, 2, 2) + 4)
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)
    assert torch.equal(fresh.bias, layer.bias)


@pytest.mark.parametrize("lu", [False, True], ids=["plain", "lu"])
def test_invertible_conv_1x1(lu):
    check_layer(randomise(InvertibleConv1x1(4, lu=lu)), torch.randn(2, 4, 3, 3))
    conv = randomise(InvertibleConv1x1(5, lu=lu)).double()
    w = conv.matrix()
    assert torch.allclose(conv.inverse_matrix() @ w, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(torch.linalg.slogdet(w)[1], conv.log_abs_det(), atol=1e-10)


def test_plain_invertible_conv_is_the_originals_single_matrix():
    """The paper's Glow learns W itself (C*C parameters, started at a random rotation); LU adds C more."""
    torch.manual_seed(0)
    plain, lu = InvertibleConv1x1(6), InvertibleConv1x1(6, lu=True)
    assert [n for n, _ in plain.named_parameters()] == ["weight"]
    assert sum(p.numel() for p in plain.parameters()) == 36
    assert sum(p.numel() for p in lu.parameters()) == 2 * 36 + 6
    assert torch.allclose(plain.weight @ plain.weight.T, torch.eye(6), atol=1e-5)


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


def test_invertible_1x1_conv_gives_the_same_numbers_on_both_memory_layouts(monkeypatch):
    """On a [B, C, H, W] tensor the 1x1 convolution is a batched matrix product (faster than oneDNN's
    convolution there); on channels-last input it stays a convolution. Outputs, inverses and gradients agree."""
    from flowood.flows import InvertibleConv1x1
    torch.manual_seed(0)
    layer = InvertibleConv1x1(6)
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn_like(layer.weight))
    x = torch.randn(3, 6, 5, 4)
    import torch.nn.functional as F
    conv2d, conv_calls = F.conv2d, []
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: conv_calls.append(1) or conv2d(*a, **k))
    results = []
    for inp in (x.clone(), x.contiguous(memory_format=torch.channels_last)):
        inp.requires_grad_(True)
        conv_calls.clear()
        y, log_det = layer(inp)
        assert len(conv_calls) == (0 if inp.is_contiguous() else 1)  # matrix product / convolution
        layer.zero_grad()
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append((y.detach(), log_det.detach(), inp.grad.clone(), layer.weight.grad.clone(),
                        layer.inverse(y.detach())))
    for a, b in zip(*results, strict=False):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(results[0][4], x, atol=1e-5)


def test_standardize_is_exact_and_uses_the_training_sets_statistics():
    from flowood.flows.layers import Standardize, set_standardization

    layer = Standardize(3)
    train = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([1.0, 30.0, 0.01]) + torch.tensor([5.0, -2.0, 0])
    assert set_standardization(torch.nn.Sequential(layer), train.float())
    np.testing.assert_allclose(layer.mean.numpy(), train.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.std.numpy(), train.numpy().std(0), rtol=1e-5)  # numpy's ddof 0, the original's
    check_layer(layer, torch.randn(4, 3) * 10)
    assert sum(p.numel() for p in layer.parameters()) == 0  # buffers only: parameter counts stay the original's
    fresh = Standardize(3)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(train[:5].float())[0], layer(train[:5].float())[0])  # not re-set from the batch
    constant = Standardize(2)
    constant.set_statistics(torch.tensor([[1.0, 2.0], [1.0, 4.0]]))
    assert constant.std.tolist() == [1.0, 1.0]  # a constant feature is shifted, not divided by zero
    unset = Standardize(2)
    batch = torch.randn(8, 2) * 4 + 1
    y, _ = unset(batch)  # never set: the first batch sets it
    assert torch.allclose(y.mean(0), torch.zeros(2), atol=1e-5) and bool(unset.initialized)
    assert not set_standardization(torch.nn.Linear(2, 2), batch)


def test_a_loaded_state_tells_actnorm_and_standardize_whether_they_are_initialised():
    from flowood.flows.layers import ActNorm, Standardize

    for make in (lambda: ActNorm(3), lambda: Standardize(3)):
        trained, fresh = make(), make()
        trained(torch.randn(8, 3))
        assert not trained.initialization_pending and fresh.initialization_pending
        fresh.load_state_dict(trained.state_dict())
        assert not fresh.initialization_pending  # known from the loaded buffer, before any forward pass
        trained.load_state_dict(make().state_dict())
        assert trained.initialization_pending  # an uninitialised state: its next pass initialises it
