"""report.html opens in headless Chromium: every image loads, nothing errors, nothing is fetched."""

from __future__ import annotations


import pytest
import torch

from browser import check_page, find_chromium
from flowood.checkpoints import save_flow
from flowood.evaluation import evaluate
from flowood.flows import RealNVP


@pytest.fixture(scope="module")
def chromium():
    path, reason = find_chromium()
    if path is None:
        pytest.skip(reason)
    return path


def test_evaluation_report_in_chromium(chromium, tmp_path, fixtures_dir):
    flow = RealNVP((1, 28, 28), num_blocks=1, num_mid_channels=4)
    flow.log_prob(torch.rand(8, 1, 28, 28))
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": f"npz:{fixtures_dir}/fashionmnist-small.npz"})
    evaluate(ckpt, [f"npz:{fixtures_dir}/mnist-small.npz", "noise"], out=tmp_path / "eval", max_samples=60,
             scores=["likelihood", "complexity"], progress=False)
    result = check_page(chromium, tmp_path / "eval" / "report.html")
    assert result["errors"] == []
    assert result["broken"] == []
    assert result["images"] == 2 + 2 + 2 * 3  # histograms, ROC curves, example grids of 3 sets


def test_probe_detects_a_broken_image(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><head></head><body><img alt='missing' src='nope.png'></body></html>")
    result = check_page(chromium, page)
    assert result["broken"] == ["missing"]
