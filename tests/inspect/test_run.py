"""flowood inspect (flowood.inspect.run) on tiny models: image selections, every figure, the HTML page (also in
Chromium), colour images and bad input."""

from __future__ import annotations

import json

import pytest
from browser import check_page
from builders import INSPECT_CONFIGS, perturbed_flow

from flowood.checkpoints import save_flow
from flowood.cli.main import main
from flowood.flows import build_flow
from flowood.inspect.run import inspect_flow, parse_image_spec


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
def test_inspect_writes_every_figure_and_the_page(name, tmp_path, fashionmnist_npz, mnist_npz):
    flow = perturbed_flow(INSPECT_CONFIGS[name])
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": fashionmnist_npz})
    code = main(["inspect", "--checkpoint", str(ckpt), "--images", f"{fashionmnist_npz}:test:0-3",
                 "--images", f"{mnist_npz}:test:0-3", "--images", "digits:test:0-1",
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


def test_inspect_works_on_colour_images_and_refuses_bad_input(tmp_path, mnist_npz):
    flow = perturbed_flow(INSPECT_CONFIGS["cycle-bottleneck-rgb"])
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": "noise"})
    result = inspect_flow(ckpt, ["noise:test:0-2", "constant:test:0-2",
                                 f"{mnist_npz}:test:0-2"],  # gray, adapted to 3x8x8
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


def test_inspect_page_in_chromium(chromium, tmp_path, fashionmnist_npz, mnist_npz):
    flow = perturbed_flow(INSPECT_CONFIGS["realnvp-gray"])
    ckpt = save_flow(flow, tmp_path / "f.pt", {"dataset": fashionmnist_npz})
    result = inspect_flow(ckpt, [f"{mnist_npz}:test:0-3"], tmp_path / "o", noise_samples=2,
                          complexity_samples=10, progress=False)
    check = check_page(chromium, result.html)
    assert check["errors"] == [] and check["broken"] == []
    assert check["images"] == 7 + len(flow.coupling_layers())
