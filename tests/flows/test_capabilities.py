"""Capability flags (flowood.flows.capabilities): what a density declares it offers beyond log_prob, read the same
way for every model, whatever its class."""

from __future__ import annotations

import dataclasses

from builders import IMAGE_CONFIGS, ready_flow
from torch import nn

from flowood.flows import build_flow
from flowood.flows.capabilities import Capabilities, capabilities


def test_flowood_flows_declare_a_traceable_rebuildable_flow_with_latents_per_scale():
    for flow in (ready_flow(IMAGE_CONFIGS["glow-channel"]), build_flow(flow="MAF", input_shape=(5,))):
        assert capabilities(flow) == Capabilities(flowood_api=True, traceable=True, rebuildable=True,
                                                  scale_latents=True)


def test_a_model_that_declares_nothing_has_no_capabilities_and_only_true_counts():
    assert capabilities(nn.Linear(2, 2)) == Capabilities()
    assert not any(dataclasses.astuple(capabilities(object())))

    class Declared(nn.Module):
        flowood_api = True
        scale_latents = 1  # truthy, but not a declared flag
        exported = "yes"

    assert capabilities(Declared()) == Capabilities(flowood_api=True)


def test_flags_are_read_from_the_instance_so_a_model_may_declare_them_per_object():
    model = nn.Module()
    model.traceable = True
    assert capabilities(model).traceable and not capabilities(nn.Module()).traceable
