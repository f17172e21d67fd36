"""Data sets named PREFIX:VALUE (flowood.data.prefixes): one table of sources, one parser of names; a new kind of
source is one class and one registration, from outside the package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowood.data import (
    PREFIXES,
    ArrayDataset,
    PrefixSource,
    canonical_name,
    dataset_inputs,
    dataset_names,
    fetch_dataset,
    load_dataset,
    parse_name,
    register_prefix,
)


class StripesSource(PrefixSource):
    """``stripes:N``: N images of horizontal stripes, a source a user might add."""

    prefix, form, description = "stripes", "stripes:N", "N striped images"
    names_a_path = False

    def load(self, name, split, root, shape):
        n = int(name.value)
        images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
        images[:, :, ::2] = 255
        return ArrayDataset(images, None, name.name, split, "stripes")


@pytest.fixture
def stripes():
    source = register_prefix(StripesSource())
    yield source
    PREFIXES.unregister(source.prefix)


def test_a_new_source_is_one_class_and_one_registration(stripes, tmp_path):
    ds = load_dataset("stripes:5", "test")
    assert len(ds) == 5 and ds.name == "stripes:5" and int(ds.data[0, 0, 0, 0]) == 255
    assert canonical_name("stripes:5") == "stripes:5" and "stripes:N" in dataset_names()
    assert dataset_inputs(["stripes:5"]) == [] and fetch_dataset("stripes:5") == ["stripes:5 is a local path; "
                                                                                    "nothing to fetch"]
    assert parse_name("stripes:5").value == "5" and parse_name("stripes:5").path is None
    with pytest.raises(ValueError, match="exists already"):
        register_prefix(StripesSource())


def test_names_are_parsed_in_one_place(tmp_path):
    npz = parse_name(f"npz:{tmp_path}/a.npz")
    assert (npz.prefix, npz.path) == ("npz", tmp_path / "a.npz")
    assert parse_name("folder:~/images").path == Path("~/images").expanduser()
    assert parse_name("openood:cifar10/tin").prefix == "openood" and parse_name("openood:cifar10/tin").path is None
    plain = parse_name("FashionMNIST")
    assert plain.prefix is None and plain.value == "FashionMNIST" and plain.source is None
    assert parse_name("nosuch:thing").prefix is None  # not a known prefix: a registered name, refused when loaded
    assert dataset_inputs([f"npz:{tmp_path}/a.npz", f"folder:{tmp_path}/f"]) == [tmp_path / "a.npz", tmp_path / "f"]
