"""Every OOD score: orientation, hand-checkable identities, fitting, and the OODDetector API."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from flowood import OODDetector
from flowood.flows import RealNVP, RealNVPTabular
from flowood.ood import (WAIC, ComplexityCorrected, LikelihoodRatio, NegativeLogLikelihood, ScaleLikelihood,
                         Typicality, compressed_bits_per_dim, make_score)
from flowood.ood.scores import fit_flow, perturb_pixels


@pytest.fixture(scope="module")
def images():
    with np.load(__import__("pathlib").Path(__file__).parent / "fixtures" / "fashionmnist-small.npz") as f:
        fm = torch.from_numpy(f["images_train"])
    with np.load(__import__("pathlib").Path(__file__).parent / "fixtures" / "mnist-small.npz") as f:
        mn = torch.from_numpy(f["images_test"])
    return fm, mn


@pytest.fixture(scope="module")
def flow(images):
    fm, _ = images
    torch.manual_seed(0)
    f = RealNVP((1, 28, 28), num_blocks=1, num_mid_channels=8)
    return fit_flow(f, fm, steps=30, batch_size=32, progress=False)


def test_likelihood_is_bits_per_dim_and_deterministic(flow, images):
    fm, _ = images
    s = NegativeLogLikelihood(flow, seed=3)
    a = s.score(fm[:20])
    assert a.shape == (20,) and np.array_equal(a, s.score(fm[:20]))
    g = torch.Generator().manual_seed(3)
    expected = flow.bits_per_dim(fm[:20], generator=g).detach().numpy()
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


def test_complexity_is_likelihood_minus_compressed_length(flow, images):
    fm, _ = images
    x = fm[:10]
    got = ComplexityCorrected(flow).score(x)
    assert np.allclose(got, NegativeLogLikelihood(flow).score(x) - compressed_bits_per_dim(x))
    assert ComplexityCorrected(flow, "jp2").name == "complexity_jp2"
    with pytest.raises(ValueError, match="image flows"):
        ComplexityCorrected(RealNVPTabular(4, num_coupling_layers=2, num_hidden_units=8))


def test_typicality_single_and_batch_forms(flow, images):
    fm, mn = images
    t = Typicality(flow)
    with pytest.raises(RuntimeError, match="fit"):
        t.score(fm[:4])
    t.fit(fm[:200])
    h = NegativeLogLikelihood(flow).score(fm[:200]).mean()
    assert t.entropy == pytest.approx(h)
    bpd = NegativeLogLikelihood(flow).score(mn[:12])
    assert np.allclose(t.score(mn[:12]), np.abs(bpd - h))
    tb = Typicality(flow, batch_size=4).fit(fm[:200])
    assert tb.name == "typicality_batch4"
    assert np.allclose(tb.score(mn[:12]), np.abs(bpd.reshape(3, 4).mean(1) - h))
    with pytest.raises(ValueError, match="at least 4"):
        tb.score(mn[:3])


def test_scale_likelihoods_split_the_prior(flow, images):
    _, mn = images
    x = mn[:6]
    last = ScaleLikelihood(flow, "last").score(x)
    early = ScaleLikelihood(flow, "early").score(x)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = flow.latents_by_scale(x, generator=g)
        prior = sum(flow.prior.log_prob(z) for z in latents).numpy()
    d_last, d_early = latents[-1][0].numel(), sum(z[0].numel() for z in latents[:-1])
    assert np.allclose(-(last * d_last + early * d_early) * math.log(2), prior, rtol=1e-5)
    assert ScaleLikelihood(flow, "early").name == "latent_early_scales"
    one_scale = RealNVP((1, 8, 8), num_scales=1, num_blocks=1, num_mid_channels=4)
    with pytest.raises(ValueError, match="single scale"):
        ScaleLikelihood(one_scale, "early")


def test_likelihood_ratio_with_given_and_trained_background(flow, images):
    fm, mn = images
    same = LikelihoodRatio(flow, background=flow)
    assert np.allclose(same.score(mn[:5]), 0.0)  # a model against itself: ratio 1
    lr = LikelihoodRatio(flow, steps=5, train_batch_size=16, progress=False)
    with pytest.raises(RuntimeError, match="fit"):
        lr.score(mn[:2])
    lr.fit(fm)
    assert lr.background is not flow and np.isfinite(lr.score(mn[:5])).all()
    with pytest.raises(ValueError, match="background flow takes"):
        LikelihoodRatio(flow, background=RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4))


def test_perturb_pixels():
    x = torch.full((2, 3, 5, 5), 7, dtype=torch.uint8)
    assert torch.equal(perturb_pixels(x, 0.0), x)
    g = torch.Generator().manual_seed(0)
    y = perturb_pixels(x, 1.0, g)
    assert (y != 7).float().mean() > 0.9
    with pytest.raises(ValueError, match="uint8"):
        perturb_pixels(x.float(), 0.1)


def test_waic(flow, images):
    _, mn = images
    same = WAIC([flow, flow]).score(mn[:5])
    assert np.allclose(same, NegativeLogLikelihood(flow).score(mn[:5]))  # no disagreement: -WAIC = NLL
    other = RealNVP((1, 28, 28), num_blocks=1, num_mid_channels=8)
    other.log_prob(mn[:8])
    s = WAIC([flow, other.eval()]).score(mn[:5])
    assert (s > NegativeLogLikelihood(flow).score(mn[:5]).min() - 100).all() and s.shape == (5,)
    with pytest.raises(ValueError, match="at least 2"):
        WAIC([flow])


def test_make_score_names():
    f = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=4)
    with pytest.raises(ValueError, match="did you mean 'complexity'"):
        make_score("complexty", f)
    with pytest.raises(ValueError, match="ensemble"):
        make_score("waic", f)


def test_ood_detector_api(flow, images):
    fm, mn = images
    det = OODDetector(flow, score="complexity")
    with pytest.raises(RuntimeError, match="fit"):
        det.threshold()
    det.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(fm[:300], torch.zeros(300)), batch_size=64))
    thr = det.threshold(fpr=0.05)
    assert np.mean(det.reference_scores > thr) <= 0.05 + 1e-9
    flagged = det.predict(mn[:100], fpr=0.05)
    assert flagged.dtype == bool and flagged.mean() > 0.5  # most MNIST digits flagged as OOD
    assert det.score(mn[:3]).shape == (3,)
    typ = OODDetector(flow, score="typicality").fit(fm[:100])
    assert typ.scorer.fitted and len(typ.reference_scores) == 20  # 20% held out for calibration
    with pytest.raises(ValueError, match="holdout"):
        OODDetector(flow, holdout=1.5)
    with pytest.raises(TypeError):
        det.fit(42)


def test_shared_cache_computes_each_likelihood_once(flow, images, monkeypatch):
    import flowood.ood.scores as scores_module
    fm, mn = images
    x = mn[:10]
    plain = {n: make_score(n, flow).score(x) for n in ("likelihood", "complexity")}
    calls = {"n": 0}
    original = scores_module.score_bits_per_dim

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(scores_module, "score_bits_per_dim", counting)
    cache: dict = {}
    shared = {n: make_score(n, flow, cache=cache).score(x) for n in ("likelihood", "complexity")}
    assert calls["n"] == 1
    for n in plain:
        assert np.array_equal(plain[n], shared[n])
    make_score("likelihood", flow, cache=cache).score(x.clone())  # another tensor is not mistaken for x
    assert calls["n"] == 2


def test_evaluate_with_ensemble_and_background_checkpoints(tmp_path, fixtures_dir):
    from flowood.checkpoints import save_flow
    from flowood.evaluation import evaluate
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        f = RealNVP((1, 28, 28), num_blocks=1, num_mid_channels=4)
        f.log_prob(torch.rand(8, 1, 28, 28))
        paths.append(save_flow(f, tmp_path / f"f{seed}.pt", {"dataset": f"npz:{fixtures_dir}/fashionmnist-small.npz"}))
    r = evaluate(paths[0], ["noise"], scores=["likelihood", "likelihood_ratio"], ensemble=paths[1:],
                 background=paths[2], max_samples=40, progress=False)
    assert r.metrics["scores_computed"] == ["likelihood", "likelihood_ratio", "waic"]
    entry = r.metrics["ood"]["noise"]["scores"]
    assert 0.0 <= entry["waic"]["auroc"] <= 1.0 and 0.0 <= entry["likelihood_ratio"]["auroc"] <= 1.0
    assert r.metrics["provenance"]["background"] == str(paths[2]) and len(r.metrics["provenance"]["ensemble"]) == 2
    with pytest.raises(ValueError, match="ensemble"):
        evaluate(paths[0], ["noise"], scores=["waic"], progress=False)
    with pytest.raises(ValueError, match="did you mean 'typicality'"):
        evaluate(paths[0], ["noise"], scores=["typicallity"], progress=False)
