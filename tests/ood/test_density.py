"""Any density model as the model of scores, the detector and evaluation (flowood.ood.density): zuko, nflows,
normflows flows and a plain user-written module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flowood.ood import OODDetector
from flowood.ood.density import DensityModel, as_density
from flowood.ood.scores import make_score
from flowood.options import ConfigError


class StandardGaussian(nn.Module):
    """A user's own density: log N(x; 0, I), in nats per sample."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1)
        return -0.5 * (x * x).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def peers(dim: int) -> dict[str, nn.Module]:
    import normflows as nf
    import zuko
    from nflows.flows import MaskedAutoregressiveFlow

    torch.manual_seed(0)
    return {
        "own": StandardGaussian(),
        "zuko": zuko.flows.MAF(features=dim, transforms=2),
        "nflows": MaskedAutoregressiveFlow(features=dim, hidden_features=8, num_layers=2, num_blocks_per_layer=1),
        "normflows": nf.NormalizingFlow(nf.distributions.base.DiagGaussian(dim),
                                        [nf.flows.MaskedAffineAutoregressive(dim, 8) for _ in range(2)]),
    }


def _log_prob(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.log_prob(x) if hasattr(model, "log_prob") else model().log_prob(x)


@pytest.mark.parametrize("name", ["own", "zuko", "nflows", "normflows"])
def test_every_kind_of_density_is_scored_and_detects_far_away_data(name):
    model = peers(4)[name].eval()
    inliers, outliers = torch.randn(200, 4), torch.randn(50, 4) * 0.3 + 6.0
    with torch.no_grad():
        expected = -_log_prob(model, inliers[:5]) / (4 * math.log(2))
    likelihood = make_score("likelihood", model, batch_size=64)
    assert np.allclose(likelihood.score(inliers[:5]), expected.numpy(), rtol=1e-5, atol=1e-5)
    detector = OODDetector(model, score="typicality").fit(inliers)
    assert (detector.predict(outliers) == -1).mean() > 0.9
    assert (detector.predict(inliers) == 1).mean() > 0.85
    assert as_density(model, input_shape=(4,)).num_dims == 4


def test_scores_that_need_a_flowood_flow_say_so():
    model = StandardGaussian()
    with pytest.raises(ConfigError, match="needs a multi-scale flowood flow"):
        make_score("latent_last_scale", model)
    with pytest.raises(ConfigError, match="needs a `background` model"):
        make_score("likelihood_ratio", model)
    with pytest.raises(ConfigError, match="is not a density"):
        as_density(nn.Linear(2, 2))
    complexity = make_score("complexity", DensityModel(model, (1, 8, 8)))
    assert complexity.score(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)).shape == (3,)
    with pytest.raises(ConfigError, match="takes vectors"):
        make_score("complexity", DensityModel(model, (5,)))


def test_uint8_images_reach_the_density_as_floats_in_the_unit_interval():
    seen = {}

    class Recorder(StandardGaussian):
        def log_prob(self, x):
            seen["x"] = x
            return super().log_prob(x)
    density = as_density(Recorder(), (1, 2, 2))
    density.bits_per_dim(torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8))
    assert seen["x"].dtype == torch.float32 and torch.allclose(seen["x"].flatten(), torch.tensor([0, 1, .2, .4]))


def test_evaluate_takes_any_density_and_writes_its_report(tmp_path):
    from flowood.evaluation import evaluate

    result = evaluate(StandardGaussian(), ["noise", "constant"], out=tmp_path / "e", dataset="digits",
                      progress=False)
    metrics = result.metrics
    assert metrics.scores_computed == ["likelihood", "typicality"]  # no per-scale or image-complexity scores
    assert metrics.provenance.checkpoint == "a model in memory"
    assert (tmp_path / "e" / "report.html").is_file()
