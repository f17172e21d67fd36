"""flowood as an installed tool: a wheel built from the project, installed into a fresh virtual environment
(its dependencies taken from this one), run from a folder outside the checkout, does what the README says."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from builders import start_server
from PIL import Image

import flowood

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel, and a virtual environment with only it installed (dependencies seen through a path file)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "runs", "site", "build", "dist",
                                                                "*.egg-info", "__pycache__", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((work / "dist").glob("flowood-*.whl"))
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # this environment's packages, without running its .pth files (so the editable flowood stays out)
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return {"wheel": wheel, "venv": venv, "work": work}


def run(installed: dict[str, Path], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{installed['venv'] / 'bin'}:{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               FLOWOOD_DATA=str(installed["work"] / "data"))
    return subprocess.run(["flowood", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_carries_configs_types_and_declared_dependencies(installed):
    with zipfile.ZipFile(installed["wheel"]) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "flowood/py.typed" in names and "flowood/configs/demo.yaml" in names
    assert sum(n.startswith("flowood/configs/paper/") for n in names) >= 20
    assert {f"flowood/configs/openood/{b}.yaml" for b in ("cifar10", "cifar100", "imagenet200")} <= names
    assert 'Requires-Dist: pytorch-ood>=0.4.0; extra == "baselines"' in metadata
    assert 'Requires-Dist: litserve>=0.2.19; extra == "serve"' in metadata
    for requirement in ("torch>=2.14", "torchvision>=0.29", "lightning>=2.6", "pillow", "scikit-learn", "pyyaml"):
        assert f"Requires-Dist: {requirement}" in metadata, requirement


def test_installed_flowood_runs_outside_the_checkout(installed, tmp_path, fixtures_dir):
    where = run(installed, "--version", cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.strip() == flowood.__version__
    python = installed["venv"] / "bin" / "python"
    origin = subprocess.run([python, "-c", "import flowood; print(flowood.__file__)"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert str(installed["venv"]) in origin.stdout, origin  # the wheel's flowood, not the checkout's
    listing = run(installed, "reproduce", "--list", cwd=tmp_path)
    assert listing.returncode == 0 and "cycle_mask_fashionmnist" in listing.stdout
    smoke = run(installed, "reproduce", "--suite", "tabular", "--scale", "smoke", "--only", "tabular_breastcancer",
                "--out", "suite", "--no_progress", cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    assert (tmp_path / "suite" / "results.md").is_file()
    shutil.copy(fixtures_dir / "fashionmnist-small.npz", tmp_path / "fm.npz")
    train = run(installed, "train", "--config", "demo", "--dataset", "npz:fm.npz", "--max_minutes", "1",
                "--max_steps", "8", "--max_test_samples", "64", "--num_epochs", "2", "--out", "run", "--no_progress",
                cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    evaluate = run(installed, "evaluate", "--checkpoint", "run/checkpoints/last.ckpt", "--ood", "noise",
                   "--max_samples", "64", "--out", "eval", "--no_progress", cwd=tmp_path)
    assert evaluate.returncode == 0 and (tmp_path / "eval" / "report.html").is_file(), evaluate.stderr[-2000:]


def test_the_readme_practitioner_path_from_the_wheel(installed, tmp_path, fixtures_dir):
    """Fit a detector, score a folder, read the CSV: as the README's "Scoring new data" shows."""
    shutil.copy(fixtures_dir / "fashionmnist-small.npz", tmp_path / "fm.npz")
    assert run(installed, "train", "--dataset", "npz:fm.npz", "--num_blocks", "1", "--num_mid_channels", "8",
               "--max_steps", "20", "--max_test_samples", "64", "--out", "run", "--no_progress",
               cwd=tmp_path).returncode == 0
    fit = run(installed, "detector", "fit", "--checkpoint", "run/checkpoints/last.ckpt", "--score", "complexity",
              "--fpr", "0.05", "--out", "detector.pt", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    new = tmp_path / "new_images"
    new.mkdir()
    with np.load(fixtures_dir / "mnist-small.npz") as f:
        for i, image in enumerate(f["images_test"][:5, 0]):
            Image.fromarray(image).save(new / f"{i}.png")
    scored = run(installed, "score", "--detector", "detector.pt", "new_images", "--out", "scores.csv", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "scores.csv").read_text().splitlines()))
    assert len(rows) == 5 and {r["decision"] for r in rows} <= {"in", "ood"}
    assert all(r["input"].startswith("new_images/") for r in rows)


def test_the_detector_that_works_deploys_and_serves_from_the_wheel(installed, tmp_path, fixtures_dir):
    """A classifier from `flowood embed`, detectors fitted on its features (a flow trained by `detector fit`, and
    Mahalanobis), `flowood score` on a folder of PNGs: the CSV's scores equal `flowood evaluate`'s for the same
    images, computed from the same classifier's embeddings; and the wheel's `flowood serve` answers /health,
    /metadata and /score over HTTP on 127.0.0.1 with the same rows."""
    shutil.copy(fixtures_dir / "fashionmnist-small.npz", tmp_path / "fm.npz")
    new = tmp_path / "new_images"
    new.mkdir()
    with np.load(fixtures_dir / "mnist-small.npz") as f:
        for i, image in enumerate(f["images_test"][:6, 0]):
            Image.fromarray(image).save(new / f"{i}.png")

    def ok(*args: str) -> subprocess.CompletedProcess:
        done = run(installed, *args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        return done
    ok("embed", "--dataset", "npz:fm.npz", "--train_classifier", "--epochs", "1", "--embedding_dim", "8",
       "--out", "emb/fm.npz", "--no_progress")
    for method in ("mahalanobis", "flow"):
        extra = ["--flow_out", "flow_run"] if method == "flow" else []
        ok("detector", "fit", "--classifier", "emb/fm.classifier.pt", "--dataset", "npz:fm.npz", "--method", method,
           "--fpr", "0.05", "--out", f"{method}.pt", "--no_progress", *extra)
        ok("score", "--detector", f"{method}.pt", "new_images", "--out", f"{method}.csv")
    fit_samples = json.loads(ok("detector", "info", "flow.pt", "--json").stdout)["data"]["fit_samples"]
    ok("embed", "--dataset", "npz:fm.npz", "--weights", "emb/fm.classifier.pt", "--ood", "folder:new_images",
       "--out", "check/fm.npz", "--no_progress")
    ok("evaluate", "--checkpoint", "flow_run/train/checkpoints/last.ckpt", "--dataset", "npz:check/fm.npz",
       "--ood", "npz:check/fm-new_images.npz", "--scores", "likelihood", "--detectors", "mahalanobis",
       "--fit_samples", str(fit_samples), "--out", "eval", "--no_progress")
    with np.load(tmp_path / "eval" / "scores.npz") as f:
        index = list(f["names"]).index("npz:check/fm-new_images.npz")
        expected = {"flow": f[f"likelihood__set{index}"], "mahalanobis": f[f"mahalanobis__set{index}"]}
    for method in ("mahalanobis", "flow"):
        rows = list(csv.DictReader((tmp_path / f"{method}.csv").read_text().splitlines()))
        assert [r["input"] for r in rows] == [f"new_images/{i}.png" for i in range(6)]
        np.testing.assert_allclose([float(r["score"]) for r in rows], expected[method], rtol=1e-5)
        assert {r["decision"] for r in rows} <= {"in", "ood"} and not any(r["adapted"] for r in rows)
    _serve_from_the_wheel(installed, tmp_path, new)


def _serve_from_the_wheel(installed: dict[str, Path], tmp_path: Path, images: Path) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("litserve")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{installed['venv'] / 'bin'}:{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    served = start_server(tmp_path / "mahalanobis.pt", tmp_path / "serve.log", command=("flowood",), env=env)
    try:
        assert httpx.get(f"{served.url}/health").status_code == 200
        meta = httpx.get(f"{served.url}/metadata").json()
        assert meta["detector"]["kind"].startswith("pipeline") and meta["input"]["shape"] == [1, 28, 28]
        files = [("files", (f"{i}.png", (images / f"{i}.png").read_bytes(), "image/png")) for i in range(6)]
        answer = httpx.post(f"{served.url}/score", files=files, timeout=60)
    finally:
        assert served.stop() == 0
    assert answer.status_code == 200, answer.text
    expected = list(csv.DictReader((tmp_path / "mahalanobis.csv").read_text().splitlines()))
    rows = answer.json()["rows"]
    assert [r["input"] for r in rows] == [f"{i}.png" for i in range(6)]
    np.testing.assert_allclose([r["score"] for r in rows], [float(r["score"]) for r in expected], rtol=1e-5)
    assert [r["decision"] for r in rows] == [r["decision"] for r in expected]
