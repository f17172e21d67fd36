"""Every OOD score (flowood.ood.scores): orientation, hand-checkable identities, fitting, and the shared cache,
on a tiny RealNVP fitted to the FashionMNIST fixture."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from builders import tiny_checkpoint, tiny_realnvp
from PIL import Image

from flowood.flows import RealNVPTabular
from flowood.ood import (
    DEFAULT_SCORES,
    SCORE_NAMES,
    SCORES,
    WAIC,
    ComplexityCorrected,
    LikelihoodRatio,
    NegativeLogLikelihood,
    OODDetector,
    OODScore,
    ScaleLikelihood,
    ScoreOptions,
    Typicality,
    compressed_bits_per_dim,
    make_score,
    register_score,
)
from flowood.ood.scores import perturb_pixels
from flowood.options import ConfigError


def test_likelihood_is_bits_per_dim_and_deterministic(fitted_flow, fixture_images):
    fm, _ = fixture_images
    s = NegativeLogLikelihood(fitted_flow, seed=3)
    a = s.score(fm[:20])
    assert a.shape == (20,) and np.array_equal(a, s.score(fm[:20]))
    g = torch.Generator().manual_seed(3)
    expected = fitted_flow.bits_per_dim(fm[:20], generator=g).detach().numpy()
    assert np.allclose(a, expected, atol=1e-5)


def test_compressed_length_matches_png_bytes():
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    x[1] = 7  # a constant image compresses far better than noise
    bits = compressed_bits_per_dim(x, "png")
    buf = io.BytesIO()
    Image.fromarray(x[0, 0].numpy()).save(buf, format="PNG", optimize=True, compress_level=9)
    assert bits[0] == pytest.approx(8 * len(buf.getvalue()) / 64)
    assert bits[1] < bits[0]
    assert compressed_bits_per_dim(x, "jp2").shape == (2,)
    with pytest.raises(ValueError, match="codec"):
        compressed_bits_per_dim(x, "gif")
    assert compressed_bits_per_dim(torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)).shape == (1,)


def test_complexity_is_likelihood_minus_compressed_length(fitted_flow, fixture_images):
    fm, _ = fixture_images
    x = fm[:10]
    got = ComplexityCorrected(fitted_flow).score(x)
    assert np.allclose(got, NegativeLogLikelihood(fitted_flow).score(x) - compressed_bits_per_dim(x))
    assert ComplexityCorrected(fitted_flow, "jp2").name == "complexity_jp2"
    with pytest.raises(ValueError, match="defined for images"):
        ComplexityCorrected(RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8))


def test_typicality_single_and_batch_forms(fitted_flow, fixture_images):
    fm, mn = fixture_images
    t = Typicality(fitted_flow)
    with pytest.raises(RuntimeError, match="fit"):
        t.score(fm[:4])
    t.fit(fm[:200])
    h = NegativeLogLikelihood(fitted_flow).score(fm[:200]).mean()
    assert t.entropy == pytest.approx(h)
    bpd = NegativeLogLikelihood(fitted_flow).score(mn[:12])
    assert np.allclose(t.score(mn[:12]), np.abs(bpd - h))
    tb = Typicality(fitted_flow, batch_size=4).fit(fm[:200])
    assert tb.name == "typicality_batch4"
    assert np.allclose(tb.score(mn[:12]), np.abs(bpd.reshape(3, 4).mean(1) - h))
    with pytest.raises(ValueError, match="at least 4"):
        tb.score(mn[:3])


def test_scale_likelihoods_split_the_prior(fitted_flow, fixture_images):
    _, mn = fixture_images
    x = mn[:6]
    last = ScaleLikelihood(fitted_flow, "last").score(x)
    early = ScaleLikelihood(fitted_flow, "early").score(x)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = fitted_flow.latents_by_scale(x, generator=g)
        prior = sum(fitted_flow.prior.log_prob(z) for z in latents).numpy()
    d_last, d_early = latents[-1][0].numel(), sum(z[0].numel() for z in latents[:-1])
    assert np.allclose(-(last * d_last + early * d_early) * math.log(2), prior, rtol=1e-5)
    assert ScaleLikelihood(fitted_flow, "early").name == "latent_early_scales"
    one_scale = tiny_realnvp(num_scales=1)
    with pytest.raises(ValueError, match="single scale"):
        ScaleLikelihood(one_scale, "early")


def test_likelihood_ratio_with_given_and_trained_background(fitted_flow, fixture_images):
    fm, mn = fixture_images
    same = LikelihoodRatio(fitted_flow, background=fitted_flow)
    assert np.allclose(same.score(mn[:5]), 0.0)  # a model against itself: ratio 1
    lr = LikelihoodRatio(fitted_flow, background_steps=5, background_batch_size=16, progress=False)
    with pytest.raises(RuntimeError, match="fit"):
        lr.score(mn[:2])
    lr.fit(fm)
    assert lr.background is not fitted_flow and np.isfinite(lr.score(mn[:5])).all()
    with pytest.raises(ValueError, match="background flow takes"):
        LikelihoodRatio(fitted_flow, background=tiny_realnvp())


def test_perturb_pixels():
    x = torch.full((2, 3, 5, 5), 7, dtype=torch.uint8)
    assert torch.equal(perturb_pixels(x, 0.0), x)
    g = torch.Generator().manual_seed(0)
    y = perturb_pixels(x, 1.0, g)
    assert (y != 7).float().mean() > 0.9
    with pytest.raises(ValueError, match="uint8"):
        perturb_pixels(x.float(), 0.1)


def test_waic(fitted_flow, fixture_images):
    _, mn = fixture_images
    same = WAIC([fitted_flow, fitted_flow]).score(mn[:5])
    assert np.allclose(same, NegativeLogLikelihood(fitted_flow).score(mn[:5]))  # no disagreement: -WAIC = NLL
    other = tiny_realnvp((1, 28, 28), num_mid_channels=8)
    other.log_prob(mn[:8])
    s = WAIC([fitted_flow, other.eval()]).score(mn[:5])
    assert (s > NegativeLogLikelihood(fitted_flow).score(mn[:5]).min() - 100).all() and s.shape == (5,)
    with pytest.raises(ValueError, match="at least 2"):
        WAIC([fitted_flow])


def test_make_score_names():
    f = tiny_realnvp()
    with pytest.raises(ValueError, match="did you mean 'complexity'"):
        make_score("complexty", f)
    with pytest.raises(ValueError, match="ensemble"):
        make_score("waic", f)


def test_shared_cache_computes_each_likelihood_once(fitted_flow, fixture_images, monkeypatch):
    import flowood.ood.scores as scores_module
    fm, mn = fixture_images
    x = mn[:10]
    plain = {n: make_score(n, fitted_flow).score(x) for n in ("likelihood", "complexity")}
    calls = {"n": 0}
    original = scores_module.score_bits_per_dim

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(scores_module, "score_bits_per_dim", counting)
    cache: dict = {}
    shared = {n: make_score(n, fitted_flow, cache=cache).score(x) for n in ("likelihood", "complexity")}
    assert calls["n"] == 1
    for n in plain:
        assert np.array_equal(plain[n], shared[n])
    make_score("likelihood", fitted_flow, cache=cache).score(x.clone())  # another tensor is not mistaken for x
    assert calls["n"] == 2


def test_make_score_takes_an_options_object_and_values(fitted_flow, fixture_images):
    fm, mn = fixture_images
    grouped = make_score("typicality", fitted_flow, ScoreOptions(typicality_batch=4), seed=2)
    assert grouped.name == "typicality_batch4" and grouped.group == 4 and grouped.seed == 2
    assert make_score("typicality", fitted_flow, typicality_batch="3").group == 3  # checked as the option says
    ratio = make_score("likelihood_ratio", fitted_flow, background_steps=7, noise="center", progress=False)
    assert (ratio.steps, ratio.noise, ratio.progress) == (7, "center", False)
    with pytest.raises(ConfigError, match="did you mean 'typicality_batch'"):
        make_score("typicality", fitted_flow, typicality_bacth=2)
    with pytest.raises(ConfigError, match="at least 1"):
        make_score("typicality", fitted_flow, typicality_batch=0)


class MeanIntensity(OODScore):
    """A score defined outside flowood: how far an input's mean pixel value lies from the training data's, times
    ``scale`` (a parameter its registry line fixes)."""

    name = "mean_intensity"
    needs_fit = True

    def __init__(self, flow, scale=1.0, batch_size=512, seed=0, cache=None, noise="uniform"):
        super().__init__(flow, batch_size, seed, cache, noise)
        self.scale = scale
        self.mean = None

    def fit(self, train):
        self.mean = float(train.float().mean())
        self.fitted = True
        return self

    def score(self, x):
        self._require_fit()
        return self.scale * np.abs(x.float().flatten(1).mean(1).numpy() - self.mean)


@pytest.fixture
def mean_intensity():
    register_score("mean_intensity", MeanIntensity, scale=2.0)
    yield "mean_intensity"
    SCORES.unregister("mean_intensity")


def test_a_score_of_ones_own_is_a_class_and_a_registry_line(mean_intensity, fitted_flow, fixture_images, tmp_path):
    fm, mn = fixture_images
    assert mean_intensity in SCORE_NAMES and mean_intensity in DEFAULT_SCORES  # the names follow the table
    score = make_score(mean_intensity, fitted_flow, seed=3).fit(fm[:100])
    assert isinstance(score, MeanIntensity) and (score.scale, score.seed) == (2.0, 3)
    expected = 2.0 * np.abs(mn[:5].float().flatten(1).mean(1).numpy() - float(fm[:100].float().mean()))
    assert np.allclose(score.score(mn[:5]), expected)
    detector = OODDetector(fitted_flow, score=mean_intensity).fit(fm[:100])
    assert detector.anomaly_score(mn[:5]).shape == (5,)
    from flowood.evaluation import evaluate

    ckpt = tiny_checkpoint(tmp_path / "f.pt")
    result = evaluate(ckpt, ["noise"], scores=["likelihood", mean_intensity], max_samples=50, fit_samples=50,
                      progress=False)
    assert result.metrics.scores_computed == ["likelihood", mean_intensity]
    assert result.score_values[mean_intensity]["noise"].shape == (50,)


def test_only_scores_are_registered():
    with pytest.raises(ConfigError, match="subclass of OODScore"):
        register_score("not_a_score", dict)
    assert "not_a_score" not in SCORE_NAMES


def test_each_score_says_which_flows_it_applies_to():
    """evaluate computes by default only the scores that make sense for the flow: the score classes say which."""
    from flowood.flows import build_flow
    from flowood.ood.scores import score_applies

    image = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_blocks=1, num_mid_channels=4)
    one_scale = build_flow(flow="RealNVP", input_shape=(1, 8, 8), num_scales=1, num_blocks=1, num_mid_channels=4)
    vectors = build_flow(flow="MAF", input_shape=(4,), num_coupling_layers=1, num_hidden_units=8)
    assert all(score_applies(s, image) for s in ("likelihood", "complexity", "latent_last_scale",
                                                 "latent_early_scales"))
    assert score_applies("latent_last_scale", one_scale) and not score_applies("latent_early_scales", one_scale)
    assert not any(score_applies(s, vectors) for s in ("complexity", "complexity_jp2", "latent_early_scales"))
    assert score_applies("typicality", vectors) and score_applies("latent_last_scale", vectors)
