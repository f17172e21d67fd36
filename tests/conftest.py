"""Shared fixtures: fixed seeds, the committed real-image fixtures, and the tiny trained models, training
configurations and experiment suite that tests in several files use (plain builders are in builders.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from browser import find_chromium
from builders import FIXTURES, fixture_arrays, tiny_realnvp

# the shared checks of flow layers report failures as test modules do
pytest.register_assert_rewrite("layer_checks")


def _share_the_cores() -> None:
    """Each pytest-xdist worker computes with its share of the CPUs (two workers with two threads each on two
    cores run three times slower than with one thread each), and so do the processes the tests start."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # registered as a flowood process with that fixed share: the commands the tests run in-process keep it, and
    # flowood processes they start count the workers when they divide the CPUs
    from flowood.runtime import CoreShare

    CoreShare(threads=threads).__enter__()


_share_the_cores()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fashionmnist_npz() -> str:
    """The committed FashionMNIST fixture (600 training, 200 test images) as a data-set name."""
    return f"npz:{FIXTURES}/fashionmnist-small.npz"


@pytest.fixture(scope="session")
def mnist_npz() -> str:
    """The committed MNIST fixture as a data-set name."""
    return f"npz:{FIXTURES}/mnist-small.npz"


@pytest.fixture(scope="session")
def fixture_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The FashionMNIST fixture's training images and the MNIST fixture's test images, as uint8 tensors."""
    return torch.from_numpy(fixture_arrays("fashionmnist")[0]), torch.from_numpy(fixture_arrays("mnist", "test")[0])


@pytest.fixture(scope="session")
def fitted_flow(fixture_images):
    """A tiny RealNVP fitted for 30 steps on the FashionMNIST fixture (shared: tests must not change it)."""
    from flowood.ood.scores import fit_flow

    fm, _ = fixture_images
    torch.manual_seed(0)
    f = tiny_realnvp((1, 28, 28), num_mid_channels=8)
    return fit_flow(f, fm, steps=30, batch_size=32, progress=False)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, fashionmnist_npz) -> Path:
    """last.ckpt of a tiny RealNVP trained for 40 steps on the FashionMNIST fixture, through the CLI."""
    from flowood.cli.main import main

    out = tmp_path_factory.mktemp("cli") / "train"
    code = main(["train", "--dataset", fashionmnist_npz, "--out", str(out),
                 "--num_blocks", "1", "--num_mid_channels", "8", "--batch_size", "32", "--max_steps", "40",
                 "--max_test_samples", "100", "--no_progress"])
    assert code == 0
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def embedded(tmp_path_factory, fashionmnist_npz, mnist_npz) -> dict[str, Path]:
    """A smallcnn trained 1 epoch on the FashionMNIST fixture by ``flowood embed`` (8-dim features): its classifier
    file, the embeddings (``emb``), the MNIST fixture's embeddings (``emb_mnist``), and a tiny RealNVPTabular trained
    20 steps on the embeddings (``flow``, a checkpoint)."""
    from flowood.embed import embed
    from flowood.training import load_config, train

    folder = tmp_path_factory.mktemp("embedded")
    result = embed(fashionmnist_npz, folder / "fm.npz", ood=[mnist_npz], backbone="smallcnn", train_classifier=True,
                   epochs=1, embedding_dim=8, progress=False)
    config = load_config(None, dict(flow="RealNVPTabular", standardize=False, num_coupling_layers=2,
                                    num_hidden_units=16, batch_size=64, max_steps=20, samples_every_n_epochs=0,
                                    dataset=f"npz:{result.out}", out=str(folder / "flow")))
    flow = train(config, progress=False)
    return {"classifier": result.classifier, "emb": result.out, "emb_mnist": result.ood_files[mnist_npz],
            "flow": flow.checkpoint}


@pytest.fixture
def train_config(fashionmnist_npz):
    """``train_config(out, **overrides)``: the checked ``TrainConfig`` of a tiny RealNVP (one residual block of 8
    channels, Adam at 1e-3, batches of 32, 12 steps, test bits/dim on 64 images) on the FashionMNIST fixture,
    writing into ``out``."""
    from flowood.training import load_config

    def make(out: Path, **overrides):
        values = dict(flow="RealNVP", num_blocks=1, num_mid_channels=8, batch_size=32, lr=1e-3, max_test_samples=64,
                      dataset=fashionmnist_npz, out=str(out), max_steps=12)
        values.update(overrides)
        return load_config(None, values)
    return make


@pytest.fixture
def mini_suite(tmp_path, fashionmnist_npz, mnist_npz) -> Path:
    """A mini experiment suite for ``flowood reproduce``, written to ``tmp_path / "configs"``: base (RealNVP, with
    inspect and a smoke-scale override), cycle (checks against base), emb (embeddings, suite "all" only) and
    photos (needs CIFAR-10, so it is skipped without the data)."""
    folder = tmp_path / "configs"
    fm, mn = fashionmnist_npz, mnist_npz
    tiny = {"num_blocks": 1, "num_mid_channels": 4, "batch_size": 32, "max_steps": 6, "max_test_samples": 64}
    specs = [
        {"name": "base", "title": "baseline", "paper": "claim 1", "suites": ["all", "mini"],
         "train": dict(dataset=fm, flow="RealNVP", **tiny), "evaluate": {"ood": [mn, "cifar10"], "max_samples": 64,
                                                                          "scores": ["likelihood"]},
         "inspect": {"images": [f"{fm}:test:0-3", f"{mn}:test:0-3"], "noise_samples": 2, "complexity_samples": 16,
                     "temperatures": [1.0]},
         "checks": [{"claim": "MNIST more likely", "metric": "auroc", "ood": mn, "below": 0.5}],
         "scales": {"smoke": {"train": {"max_steps": 4}}}},
        {"name": "cycle", "title": "cycle mask", "suites": ["all", "mini"],
         "train": dict(dataset=fm, flow="RealNVPCycleMask", **tiny),
         "evaluate": {"ood": [mn], "max_samples": 64, "scores": ["likelihood"]},
         "checks": [{"claim": "better than base", "metric": "auroc", "ood": mn, "better_than": "base"},
                    {"claim": "worse bpd", "metric": "test_bpd", "worse_than": "base"}]},
        {"name": "emb", "title": "embeddings", "suites": ["all"],
         "embed": {"dataset": fm, "train_classifier": True, "epochs": 1, "embedding_dim": 8},
         "train": {"dataset": fm, "flow": "MAF", "num_coupling_layers": 2, "num_hidden_units": 16, "batch_size": 32,
                   "max_steps": 5},
         "evaluate": {"ood": [mn]},
         "checks": [{"claim": "detected", "metric": "auroc", "ood": "mnist-small", "above": 0.0}]},
        {"name": "photos", "title": "needs CIFAR-10", "suites": ["all"], "train": {"dataset": "cifar10"},
         "evaluate": {"ood": ["svhn"]}},
    ]
    folder.mkdir()
    for i, spec in enumerate(specs):
        (folder / f"{i}_{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path, for loading HTML pages with browser.check_page; the test is skipped without it."""
    path, reason = find_chromium()
    if path is None:
        pytest.skip(reason)
    return path
