"""Any density model as the model of scores, the detector and evaluation (flowood.ood.density): zuko, nflows,
normflows flows and a plain user-written module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flowood.ood import OODDetector
from flowood.ood.density import Capabilities, DensityModel, as_density, capabilities
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


class TwoScaleGaussian(nn.Module):
    """A user's density that speaks flowood's scoring API and declares latents per scale: N(0, I) on vectors whose
    first and second halves are its two scales."""

    flowood_api = scale_latents = True
    discrete = False
    num_scales = 2

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.input_shape, self.num_dims = (dim,), dim
        self.scale_dims = [dim // 2, dim - dim // 2]
        self.config = {"flow": "TwoScaleGaussian"}

    def check_input(self, x, image_range=None):
        assert x.shape[1:] == self.input_shape

    def log_prior_by_scale(self, x, noise="uniform", generator=None):
        parts = x.float().split(self.scale_dims, dim=1)
        return torch.stack([-0.5 * (p * p).sum(1) - 0.5 * p.shape[1] * math.log(2 * math.pi) for p in parts], 1)

    def log_prob(self, x, noise="uniform", generator=None, validate=True):
        return self.log_prior_by_scale(x).sum(1)

    def bits_per_dim(self, x, **kwargs):
        return -self.log_prob(x) / (self.num_dims * math.log(2.0))


def test_what_a_density_declares_decides_how_it_is_scored_not_its_class():
    declared = TwoScaleGaussian()
    assert as_density(declared) is declared  # it speaks flowood's API: used as it is
    x = torch.randn(5, 4)
    early = make_score("latent_early_scales", declared, batch_size=2).score(x)
    expected = 0.5 * (x[:, :2] ** 2).sum(1) / (2 * math.log(2)) + 0.5 * math.log(2 * math.pi) / math.log(2)
    assert np.allclose(early, expected.numpy(), rtol=1e-5)
    wrapped = as_density(StandardGaussian(), input_shape=(4,))
    assert isinstance(wrapped, DensityModel) and capabilities(wrapped) == Capabilities(flowood_api=True)
    assert as_density(wrapped) is wrapped
    with pytest.raises(ConfigError, match="needs a multi-scale flowood flow"):
        make_score("latent_early_scales", wrapped)
    with pytest.raises(ConfigError, match="needs a `background` model"):  # not rebuildable: nothing to train
        make_score("likelihood_ratio", declared)
