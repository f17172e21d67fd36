"""flowood inspect on tiny models: every analysis, every figure, the HTML page in Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from browser import check_page, find_chromium
from flowood.checkpoints import save_flow
from flowood.cli.main import main
from flowood.flows import build_flow
from flowood.inspect.analysis import (averaged_latents, coupling_prediction_quality, likelihood_contributions,
                                      pearson, pixel_log_likelihood, r2_score)
from flowood.inspect.run import inspect_flow, parse_image_spec

CONFIGS = {
    "realnvp-gray": dict(flow="RealNVP", input_shape=(1, 28, 28), num_blocks=1, num_mid_channels=4),
    "glow-gray": dict(flow="Glow", input_shape=(1, 28, 28), num_coupling_layers_per_scale=2, num_blocks=1,
                      num_mid_channels=4, st_type="highway"),
    "cycle-bottleneck-rgb": dict(flow="RealNVPCycleMask", input_shape=(3, 8, 8), st_type="autoencoder",
                                 num_mid_channels=4, latent_dim=3),
    "realnvp-packed-checkerboard": dict(flow="RealNVP", input_shape=(1, 28, 28), mask="checkerboard_packed",
                                        num_blocks=1, num_mid_channels=4),
    "glow-rgb-checkerboard": dict(flow="Glow", input_shape=(3, 8, 8), num_scales=2, num_coupling_layers_per_scale=1,
                                  mask="checkerboard", num_blocks=1, num_mid_channels=4),
}


def tiny(config):
    flow = build_flow(config)
    flow.log_prob(torch.randint(0, 256, (8, *flow.input_shape), dtype=torch.uint8))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow.eval()


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

    flow = tiny(dict(flow="RealNVP", input_shape=(1, 4, 4), num_scales=1, num_coupling_layers_per_scale=1,
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


@pytest.mark.parametrize("name", list(CONFIGS))
def test_analyses_are_consistent(name):
    flow = tiny(CONFIGS[name])
    x = torch.randint(0, 256, (3, *flow.input_shape), dtype=torch.uint8)
    maps = pixel_log_likelihood(flow, x)
    assert maps.shape == (3, *flow.input_shape[1:])
    assert torch.allclose(maps.sum((1, 2)), flow.log_prob(x, noise="center").detach(), atol=1e-2)
    contributions = likelihood_contributions(flow, x)
    total = sum(l["nats"] for l in contributions["layers"]) + sum(s["prior_nats"] for s in contributions["scales"])
    assert total == pytest.approx(contributions["total_nats"], rel=1e-5)
    assert len(contributions["scales"]) == flow.num_scales
    quality = coupling_prediction_quality(flow, x)
    assert len(quality) == len(flow.coupling_layers())
    assert all(np.isfinite(q["r2"]) and np.isfinite(q["mean_s"]) for q in quality)
    assert averaged_latents(flow, x, num_samples=3).shape == x.shape


def test_parse_image_spec():
    s = parse_image_spec("fashionmnist:test:0-3,7")
    assert (s.name, s.split, s.indices) == ("fashionmnist", "test", [0, 1, 2, 3, 7])
    assert parse_image_spec("mnist").indices == list(range(8))
    assert parse_image_spec("mnist:train").split == "train"
    s = parse_image_spec("npz:/data/x.npz:test:2")
    assert (s.name, s.indices) == ("npz:/data/x.npz", [2])
    with pytest.raises(ValueError, match="backwards"):
        parse_image_spec("mnist:test:5-2")
    with pytest.raises(ValueError, match="split"):
        parse_image_spec("mnist:valid:0-3")


@pytest.mark.parametrize("name", ["realnvp-gray", "glow-gray"])
def test_inspect_writes_every_figure_and_the_page(name, tmp_path, fixtures_dir):
    flow = tiny(CONFIGS[name])
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": f"npz:{fixtures_dir}/fashionmnist-small.npz"})
    code = main(["inspect", "--checkpoint", str(ckpt), "--images", f"npz:{fixtures_dir}/fashionmnist-small.npz:test:0-3",
                 "--images", f"npz:{fixtures_dir}/mnist-small.npz:test:0-3", "--images", "digits:test:0-1",
                 "--out", str(tmp_path / "insp"), "--noise-samples", "2", "--complexity-samples", "30", "--pdf",
                 "--no_progress"])
    assert code == 0
    out = tmp_path / "insp"
    for f in ("latents", "coupling_prediction_r2", "likelihood_contributions", "pixel_loglik", "loglik_vs_complexity",
              "samples", "masks"):
        assert (out / f"{f}.png").stat().st_size > 1000 and (out / f"{f}.pdf").exists()
    couplings = sorted(out.glob("coupling_[0-9]*.png"))
    assert len(couplings) == len(flow.coupling_layers())
    numbers = json.loads((out / "inspect.json").read_text())
    assert set(numbers["coupling_prediction"]) == {"fashionmnist-small.npz", "mnist-small.npz", "digits"}
    for corr in numbers["likelihood_vs_complexity_correlation"].values():
        assert -1.0 <= corr <= 1.0
    page = (out / "inspect.html").read_text()
    assert page.count("data:image/png;base64,") == 7 + len(couplings)


def test_inspect_works_on_colour_images_and_refuses_bad_input(tmp_path, fixtures_dir):
    flow = tiny(CONFIGS["cycle-bottleneck-rgb"])
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": "noise"})
    result = inspect_flow(ckpt, ["noise:test:0-2", "constant:test:0-2",
                                 f"npz:{fixtures_dir}/mnist-small.npz:test:0-2"],  # gray, adapted to 3x8x8
                          tmp_path / "o", noise_samples=2, complexity_samples=10, progress=False)
    assert result.html.exists()
    saved = json.loads((tmp_path / "o" / "inspect.json").read_text())  # strict JSON: NaN written as null
    assert saved["likelihood_vs_complexity_correlation"]["noise"] is None or \
        -1 <= saved["likelihood_vs_complexity_correlation"]["noise"] <= 1
    with pytest.raises(ValueError, match="out of range"):
        inspect_flow(ckpt, ["digits:test:5000"], tmp_path / "p", progress=False)
    tab = build_flow(dict(flow="RealNVPTabular", input_shape=(4,), num_coupling_layers=2, num_hidden_units=8))
    with pytest.raises(ValueError, match="image flows"):
        inspect_flow(save_flow(tab, tmp_path / "t.pt", {}), ["digits"], tmp_path / "q", progress=False)


def test_inspect_page_in_chromium(tmp_path, fixtures_dir):
    chromium, reason = find_chromium()
    if chromium is None:
        pytest.skip(reason)
    flow = tiny(CONFIGS["realnvp-gray"])
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": f"npz:{fixtures_dir}/fashionmnist-small.npz"})
    result = inspect_flow(ckpt, [f"npz:{fixtures_dir}/mnist-small.npz:test:0-3"], tmp_path / "o", noise_samples=2,
                          complexity_samples=10, progress=False)
    check = check_page(chromium, result.html)
    assert check["errors"] == [] and check["broken"] == []
    assert check["images"] == 7 + len(flow.coupling_layers())
