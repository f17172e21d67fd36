"""Optimizers (flowood.training.optim): PyTorch's default implementations, and unknown names refused."""

from __future__ import annotations

import pytest
from builders import SPEED_CONFIGS, trained_like


def test_training_optimizers_are_pytorchs_defaults():
    """``make_optimizer`` builds the optimizers ``flowood train`` offers with PyTorch's default implementation
    (the fused and multi-tensor Adam trained the demo to worse bits/dim), and refuses unknown names."""
    from flowood.training import make_optimizer
    flow = trained_like(SPEED_CONFIGS["glow-convnet-rgb"])
    for name in ("Adam", "AdamW", "RMSprop", "SGD"):
        opt = make_optimizer(flow.parameters(), name, lr=1e-3)
        assert type(opt).__name__ == name
        assert not opt.defaults.get("fused") and opt.defaults.get("foreach") is None
    assert make_optimizer(flow.parameters(), "SGD").defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(flow.parameters(), "Lion")
