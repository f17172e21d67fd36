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


def test_weight_decay_follows_the_original():
    """The original decays only a RealNVP's weight-normalisation scales (``*weight_g``), and every parameter of Glow
    and the tabular RealNVP."""
    from flowood.flows import build_flow
    from flowood.training import make_optimizer
    from flowood.training.optim import weight_decay_groups
    realnvp = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4)
    decayed, other = weight_decay_groups(realnvp, 5e-5)
    names = {id(p): n for n, p in realnvp.named_parameters()}
    assert decayed["weight_decay"] == 5e-5 and other["weight_decay"] == 0.0
    assert {names[id(p)].rsplit(".", 1)[-1] for p in decayed["params"]} == {"weight_g"}
    assert len(decayed["params"]) + len(other["params"]) == len(list(realnvp.parameters()))
    opt = make_optimizer([decayed, other], "Adam", lr=1e-3, weight_decay=5e-5)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-5, 0.0]
    for config in (dict(flow="Glow", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=1,
                        num_mid_channels=4),
                   dict(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=4),
                   dict(flow="RealNVP", input_shape=(1, 4, 4), num_blocks=1, num_mid_channels=4, weight_norm=False)):
        flow = build_flow(config)
        (group,) = weight_decay_groups(flow, 5e-5)
        assert len(group["params"]) == len(list(flow.parameters()))
        assert make_optimizer([group], "Adam", weight_decay=5e-5).param_groups[0]["weight_decay"] == 5e-5


def test_each_parameter_group_is_clipped_on_its_own_and_the_loss_is_in_nats():
    import math

    import torch

    from flowood.training import FlowModule, TrainConfig
    module = FlowModule(TrainConfig(architecture=dict(flow="RealNVP", num_blocks=1, num_mid_channels=4)).to_dict(),
                        (1, 8, 8))
    opt = module.configure_optimizers()
    for group, size in zip(opt.param_groups, (3.0, 400.0), strict=True):
        for p in group["params"]:
            p.grad = torch.full_like(p, size)
    module.configure_gradient_clipping(opt, gradient_clip_val=100.0)
    norms = [torch.nn.utils.get_total_norm([p.grad for p in g["params"]]).item() for g in opt.param_groups]
    assert norms[0] == pytest.approx(min(100.0, 3.0 * math.sqrt(sum(p.numel() for p in opt.param_groups[0]["params"]))),
                                     rel=1e-5)
    assert norms[1] == pytest.approx(100.0, rel=1e-5)  # (clipped alone: the first group's norm did not count)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(0)
    loss = module._loss(x)
    torch.manual_seed(0)
    assert loss.item() == pytest.approx(-module.flow.log_prob(x).mean().item(), rel=1e-6)
    assert module.bits_per_dim(loss).item() == pytest.approx(loss.item() / (64 * math.log(2)), rel=1e-6)
