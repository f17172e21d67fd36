"""Autoregressive layers (flowood.flows.autoregressive): MADE is autoregressive; the MAF layer and the reverse
permutation are exactly invertible with a log-determinant equal to a brute-force Jacobian."""

from __future__ import annotations

import pytest
import torch
from builders import randomise
from layer_checks import check_layer
from torch.autograd.functional import jacobian


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
