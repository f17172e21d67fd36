"""Preprocessing (flowood.flows.preprocessing): the logit transform is exactly invertible with the hand-computed
log-determinant; dequantization and quantization round-trip 8-bit values."""

from __future__ import annotations

import math

import pytest
import torch
from layer_checks import check_layer

from flowood.flows import LogitTransform, dequantize, quantize


def test_logit_transform():
    check_layer(LogitTransform(0.05), torch.rand(3, 1, 3, 3) * 0.98 + 0.01)


def test_logit_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(0.6)


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
