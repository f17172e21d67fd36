"""Checks of one flow layer shared by the flows' tests: exact invertibility and a log-determinant equal to a
brute-force Jacobian."""

from __future__ import annotations

import torch
from torch.autograd.functional import jacobian


def brute_force_log_det(layer, x):
    """log |det J| of ``layer`` at each sample of ``x`` from the full autograd Jacobian."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        jac = jacobian(lambda v, xi=xi: layer(v.view_as(xi))[0].reshape(-1), xi.reshape(-1))
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
