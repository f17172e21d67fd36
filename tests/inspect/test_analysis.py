"""The paper's analyses as numbers (flowood.inspect.analysis) on tiny models: R^2 and correlations on constructed
cases, and per-pixel likelihoods, contributions and coupling prediction quality that add up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import INSPECT_CONFIGS, perturbed_flow

from flowood.inspect.analysis import (
    averaged_latents,
    coupling_prediction_quality,
    likelihood_contributions,
    pearson,
    pixel_log_likelihood,
    r2_score,
)


def test_r2_and_pearson_on_constructed_cases():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(target, target) == 1.0
    assert r2_score(np.full(4, target.mean()), target) == 0.0  # predicting the mean explains nothing
    assert r2_score(target + 1.0, target) == pytest.approx(1 - 4 / 5)  # SS_res = 4, SS_tot = 5
    assert r2_score(-target, target) < 0
    assert np.isnan(r2_score(target, np.ones(4)))
    assert pearson(target, 2 * target + 3) == pytest.approx(1.0)


def test_r2_of_a_coupling_whose_shift_predicts_the_pixels_exactly():
    """Rows of constant value and an st-network predicting each masked pixel as the mean of its visible
    horizontal neighbours: -t equals the masked input exactly, so R^2 = 1."""
    import torch.nn.functional as F

    flow = perturbed_flow(dict(flow="RealNVP", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=1,
                     num_blocks=1, num_mid_channels=4))
    layer = flow.steps[0]
    kernel = torch.tensor([[[[1.0, 0.0, 1.0]]]])

    class NeighbourMean(torch.nn.Module):
        def forward(self, visible):
            seen = F.conv2d(layer.condition.expand_as(visible[:1]), kernel, padding=(0, 1))
            t = -F.conv2d(visible, kernel, padding=(0, 1)) / seen
            return torch.cat((torch.full_like(visible, -20.0), t), 1)  # tanh(-20) * rescale: s is constant

    layer.st_net = NeighbourMean()
    rows = torch.tensor([10, 80, 150, 220], dtype=torch.uint8).view(1, 1, 4, 1)
    x = torch.cat([rows.expand(1, 1, 4, 4), (255 - rows).expand(1, 1, 4, 4)])
    q = coupling_prediction_quality(flow, x)
    assert q[0]["r2"] == pytest.approx(1.0) and q[0]["corr"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(INSPECT_CONFIGS))
def test_analyses_are_consistent(name):
    flow = perturbed_flow(INSPECT_CONFIGS[name])
    x = torch.randint(0, 256, (3, *flow.input_shape), dtype=torch.uint8)
    maps = pixel_log_likelihood(flow, x)
    assert maps.shape == (3, *flow.input_shape[1:])
    assert torch.allclose(maps.sum((1, 2)), flow.log_prob(x, noise="center").detach(), atol=1e-2)
    contributions = likelihood_contributions(flow, x)
    total = sum(layer["nats"] for layer in contributions["layers"]) + sum(s["prior_nats"]
                                                                          for s in contributions["scales"])
    assert total == pytest.approx(contributions["total_nats"], rel=1e-5)
    assert len(contributions["scales"]) == flow.num_scales
    quality = coupling_prediction_quality(flow, x)
    assert len(quality) == len(flow.coupling_layers())
    assert all(np.isfinite(q["r2"]) and np.isfinite(q["mean_s"]) for q in quality)
    assert averaged_latents(flow, x, num_samples=3).shape == x.shape
