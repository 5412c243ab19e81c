"""Reading and writing NIfTI and PNG/JPEG: shapes, dtypes, affine/spacing, atomic writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from segsynth.data.io import file_stem, read_image, read_mask, write_image, write_mask
from segsynth.errors import DataError
from tests.data.data_builders import save_nifti, save_png


def test_nifti_3d_keeps_affine_spacing_and_axis_order(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    aff = np.diag([0.5, 0.75, 2.0, 1.0])
    aff[:3, 3] = [-10.0, 20.0, 5.5]
    save_nifti(tmp_path / "v.nii.gz", data, aff)
    img, meta = read_image(tmp_path / "v.nii.gz")
    assert img.shape == (1, 4, 5, 6) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0], data)  # nibabel's (x, y, z) order is kept
    np.testing.assert_allclose(meta["affine"], aff)
    assert meta["spacing"] == [0.5, 0.75, 2.0]
    assert meta["spatial_dims"] == 3 and meta["format"] == "nifti"


def test_nifti_4d_channels_last_becomes_channel_first(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6, 2)).astype(np.float32)
    save_nifti(tmp_path / "v.nii", data)
    img, meta = read_image(tmp_path / "v.nii")
    assert img.shape == (2, 4, 5, 6)
    np.testing.assert_allclose(img[1], data[..., 1])


def test_nifti_mask_raw_integer_values(tmp_path):
    m = np.zeros((4, 4, 3), np.uint8)
    m[1, 1, 1] = 7
    save_nifti(tmp_path / "m.nii.gz", m)
    mask, _ = read_mask(tmp_path / "m.nii.gz")
    assert mask.dtype == np.int64 and mask.shape == (4, 4, 3)
    assert set(np.unique(mask).tolist()) == {0, 7}


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("RGBA", 3)])
def test_png_grey_rgb_rgba(tmp_path, mode, channels):
    arr = np.random.default_rng(0).integers(0, 256, (6, 9, len(mode)) if len(mode) > 1 else (6, 9), dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(tmp_path / "a.png")
    img, meta = read_image(tmp_path / "a.png")
    assert img.shape == (channels, 6, 9)  # (C, H, W): rows first
    assert meta["dtype"] == "uint8" and meta["spacing"] == [1.0, 1.0]
    ref = arr if arr.ndim == 2 else arr[..., 0]
    np.testing.assert_array_equal(img[0], ref.astype(np.float32))


def test_png_16_bit_keeps_range(tmp_path):
    arr = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    save_png(tmp_path / "x.png", arr)
    img, meta = read_image(tmp_path / "x.png")
    assert meta["dtype"] == "uint16"
    assert img.max() == 55000.0


def test_jpeg_rgb(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "a.jpg")
    img, meta = read_image(tmp_path / "a.jpg")
    assert img.shape == (3, 8, 8) and meta["format"] == "jpg"
    assert abs(float(img.mean()) - 120) < 3


def test_mask_palette_gives_indices_and_rgb_grey_is_accepted(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png")[0].tolist() == [[0, 1], [2, 1]]
    grey_rgb = np.repeat(np.array([[0, 255]], np.uint8)[..., None], 3, -1)
    save_png(tmp_path / "g.png", grey_rgb)
    assert read_mask(tmp_path / "g.png")[0].tolist() == [[0, 255]]
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = [255, 0, 0]
    save_png(tmp_path / "c.png", colour)
    with pytest.raises(DataError, match="c.png"):
        read_mask(tmp_path / "c.png")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".png"])
def test_write_read_round_trip_2d(tmp_path, suffix):
    rng = np.random.default_rng(1)
    image = rng.random((1, 7, 5)).astype(np.float32)
    mask = rng.integers(0, 3, (7, 5))
    write_image(tmp_path / f"i{suffix}", image, {"spacing": [0.5, 0.5]})
    write_mask(tmp_path / f"m{suffix}", mask)
    back, meta = read_image(tmp_path / f"i{suffix}")
    assert back.shape == (1, 7, 5)
    if suffix == ".png":
        np.testing.assert_allclose(back / 255.0, image, atol=0.5 / 255 + 1e-6)
    else:
        np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(read_mask(tmp_path / f"m{suffix}")[0], mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"i{suffix}", f"m{suffix}"])  # no temp files


def test_write_multichannel_2d_and_3d_nifti(tmp_path):
    rng = np.random.default_rng(2)
    im2 = rng.standard_normal((3, 6, 5)).astype(np.float32)
    im3 = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    write_image(tmp_path / "a.nii.gz", im2)
    write_image(tmp_path / "b.nii.gz", im3, {"affine": aff.tolist()})
    a, ma = read_image(tmp_path / "a.nii.gz")
    b, mb = read_image(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(a, im2)
    assert ma["spatial_dims"] == 2
    np.testing.assert_array_equal(b, im3)
    np.testing.assert_allclose(mb["affine"], aff)
    assert nib.load(str(tmp_path / "b.nii.gz")).shape == (4, 5, 6, 2)


def test_write_rejects_unknown_suffix_and_jpeg_masks(tmp_path):
    with pytest.raises(DataError, match="x.bmp"):
        write_image(tmp_path / "x.bmp", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(DataError, match="m.jpg"):
        write_mask(tmp_path / "m.jpg", np.zeros((4, 4), np.int64))
    assert list(tmp_path.iterdir()) == []


def test_file_stem_handles_double_suffix():
    assert file_stem("a/b/case_001.nii.gz") == "case_001"
    assert file_stem("x.png") == "x"
