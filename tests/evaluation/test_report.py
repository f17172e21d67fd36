"""report.html (flowood.evaluation.report) opens in headless Chromium: every image loads, nothing errors, nothing
is fetched; and the browser probe itself detects a broken image."""

from __future__ import annotations

from browser import check_page
from builders import tiny_checkpoint

from flowood.evaluation import evaluate


def test_evaluation_report_in_chromium(chromium, tmp_path, fashionmnist_npz, mnist_npz):
    ckpt = tiny_checkpoint(tmp_path / "f.pt", fashionmnist_npz, init_batch=8, input_shape=(1, 28, 28))
    evaluate(ckpt, [mnist_npz, "noise"], out=tmp_path / "eval", max_samples=60,
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
