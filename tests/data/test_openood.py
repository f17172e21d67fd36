"""OpenOOD v1.5's benchmarks (flowood.data.openood): the shipped definitions load, every set of each is read from
files in OpenOOD's format (image lists over images_classic/ and images_largescale/), images go through OpenOOD's test
transform, and an evaluation groups its results near/far."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import tiny_checkpoint
from PIL import Image

from flowood.data import load_dataset
from flowood.data.openood import benchmark_names, load_benchmark, read_imglist
from flowood.data.registry import DatasetNotFoundError
from flowood.errors import DataError
from flowood.evaluation import Metrics, evaluate
from flowood.evaluation.evaluate import benchmark_table
from flowood.options import ConfigError


def _image(path, size, mode="RGB", seed=0):
    g = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        Image.fromarray(g.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
    elif mode == "L":
        Image.fromarray(g.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def write_openood(root, bench, sets, in_distribution, n=4, size=(32, 32), folder="images_classic", extra=None):
    """OpenOOD's layout under ``root/openood``: one list per set and split, images under ``folder``."""
    base = root / "openood"
    lists = base / "benchmark_imglist" / bench
    lists.mkdir(parents=True, exist_ok=True)
    for set_name in sets:
        splits = ("train", "test") if set_name == in_distribution else ("test",)
        for split in splits:
            where = (extra or {}).get(set_name, folder)
            images = base / where / set_name / split
            images.mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(n):
                _image(images / f"{i}.png", size, seed=i)
                label = i % 2 if set_name == in_distribution else -1
                lines.append(f"{set_name}/{split}/{i}.png {label}")
            (lists / f"{split}_{set_name}.txt").write_text("\n".join(lines) + "\n")
    return base


def test_shipped_benchmarks_define_openoods_sets():
    assert benchmark_names() == ["cifar10", "cifar100", "imagenet200"]
    c10 = load_benchmark("openood_cifar10")
    assert (c10.near, c10.far) == (("cifar100", "tin"), ("mnist", "svhn", "texture", "places365"))
    assert c10.ood_datasets[0] == "openood:cifar10/cifar100" and c10.group("openood:cifar10/svhn") == "far"
    assert c10.group("mnist") is None
    assert {r["method"] for r in c10.leaderboard["rows"]} == {"MSP", "KNN"}
    c100 = load_benchmark("cifar100")
    assert c100.near == ("cifar10", "tin") and c100.num_classes == 100
    i200 = load_benchmark("imagenet200")
    assert (i200.near, i200.far) == (("ssb_hard", "ninco"), ("inaturalist", "textures", "openimage_o"))
    assert (i200.pre_size, i200.image_size) == (256, 224)
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        load_benchmark("cifar1O")


@pytest.mark.parametrize("bench", ["cifar10", "cifar100"])
def test_every_set_of_the_cifar_benchmarks_loads(tmp_path, bench):
    b = load_benchmark(bench)
    write_openood(tmp_path, bench, [b.in_distribution, *b.near, *b.far], b.in_distribution)
    for set_name in (b.in_distribution, *b.near, *b.far):
        ds = load_dataset(b.dataset(set_name), "test", tmp_path)
        assert ds.data.shape == (4, 3, 32, 32) and ds.name == f"openood:{bench}/{set_name}"
    train = load_dataset(b.dataset(b.in_distribution), "train", tmp_path)
    assert train.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="test split only"):
        load_dataset(b.dataset("tin"), "train", tmp_path)


def test_imagenet200_reads_largescale_and_classic_images_with_openoods_transform(tmp_path):
    b = load_benchmark("imagenet200")
    sets = [b.in_distribution, *b.near, *b.far]
    write_openood(tmp_path, "imagenet200", sets, b.in_distribution, n=2, size=(300, 260), folder="images_largescale",
                  extra={"textures": "images_classic"})
    for set_name in sets:
        assert load_dataset(b.dataset(set_name), "test", tmp_path).data.shape == (2, 3, 224, 224)
    # shorter side to 256 (bilinear), centre crop 224: OpenOOD's test transform
    im = Image.open(tmp_path / "openood" / "images_classic" / "textures" / "test" / "0.png")
    resized = im.resize((295, 256), Image.BILINEAR)
    expected = np.asarray(resized.crop((35, 16, 259, 240))).transpose(2, 0, 1)
    np.testing.assert_array_equal(load_dataset(b.dataset("textures"), "test", tmp_path).data[0].numpy(), expected)


def test_lists_and_images_are_decoded_faithfully(tmp_path):
    base = write_openood(tmp_path, "cifar10", ["cifar10"], "cifar10", n=1)
    images = base / "images_classic" / "mnist" / "test"
    images.mkdir(parents=True)
    _image(images / "gray.png", (28, 28), "L")
    _image(images / "deep.png", (32, 32), "I;16", seed=3)
    (base / "benchmark_imglist" / "cifar10" / "test_mnist.txt").write_text(
        "mnist/test/gray.png -1\nmnist/test/deep.png {'label': -1}\n")
    ds = load_dataset("openood:cifar10/mnist", "test", tmp_path)
    gray = np.asarray(Image.open(images / "gray.png").resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(ds.data[0].numpy(), np.stack([gray] * 3))  # gray made RGB, as OpenOOD does
    deep = np.asarray(Image.open(images / "deep.png"), dtype=np.uint16)
    np.testing.assert_array_equal(ds.data[1, 0].numpy(), (deep >> 8).astype(np.uint8))  # 16 bits scaled, not clipped
    assert ds.labels.tolist() == [-1, -1]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.png 1\nnolabel.png\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        read_imglist(bad)
    bad.write_text("../../etc/passwd 1\n")
    with pytest.raises(DataError, match="relative"):
        read_imglist(bad)


def test_missing_data_name_openoods_downloader(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download.py --contents datasets --datasets ood_v1.5"):
        load_dataset("openood:cifar10/tin", "test", tmp_path)
    with pytest.raises(DataError, match="has no set 'tiny'.*did you mean 'tin'"):
        load_dataset("openood:cifar10/tiny", "test", tmp_path)
    with pytest.raises(DataError, match="openood:BENCHMARK/SET"):
        load_dataset("openood:cifar10", "test", tmp_path)
    write_openood(tmp_path, "cifar10", ["cifar10"], "cifar10", n=1)
    (tmp_path / "openood" / "benchmark_imglist" / "cifar10" / "test_svhn.txt").write_text("svhn/test/0.png -1\n")
    with pytest.raises(DataError, match="download is incomplete"):
        load_dataset("openood:cifar10/svhn", "test", tmp_path)


def test_evaluate_on_a_benchmark_groups_near_and_far(tmp_path):
    b = load_benchmark("cifar10")
    write_openood(tmp_path, "cifar10", [b.in_distribution, *b.near, *b.far], b.in_distribution, n=6)
    ckpt = tiny_checkpoint(tmp_path / "f.pt", "cifar10", init_batch=4, input_shape=(3, 32, 32))
    result = evaluate(ckpt, [], out=tmp_path / "eval", benchmark="cifar10", data_root=str(tmp_path),
                      scores=["likelihood"], progress=False)
    m = result.metrics
    assert m.in_distribution.name == "openood:cifar10/cifar10"
    assert list(m.ood) == b.ood_datasets
    bench = m.benchmark
    assert bench.near == ["openood:cifar10/cifar100", "openood:cifar10/tin"] and len(bench.far) == 4
    near = np.mean([m.ood[n].scores["likelihood"].auroc for n in bench.near])
    assert bench.scores["likelihood"]["near"].auroc == pytest.approx(near)
    table = benchmark_table(m)
    assert "| MSP (published) | 88.03 | 90.73 |" in table and "flowood likelihood" in table
    assert "OpenOOD v1.5 CIFAR-10 benchmark" in (tmp_path / "eval" / "report.html").read_text()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["benchmark"]["name"] == "cifar10"
    assert Metrics.from_json(tmp_path / "eval") == m  # the benchmark and its leaderboard round-trip too


def test_a_list_too_large_for_memory_is_decoded_as_a_seeded_subset(tmp_path, monkeypatch):
    monkeypatch.setattr("flowood.data.openood.MAX_DECODED_BYTES", 2 * 3 * 32 * 32)
    write_openood(tmp_path, "cifar10", ["cifar10"], "cifar10", n=5)
    with pytest.warns(UserWarning, match="lists 5 images; a seeded random subset of 2"):
        ds = load_dataset("openood:cifar10/cifar10", "train", tmp_path)
    assert ds.data.shape == (2, 3, 32, 32)
