"""Normalisation, resizing (masks keep their ids), crop/pad, 2D slices of volumes."""

from __future__ import annotations

import numpy as np
import pytest

from segsynth.data.case import Case
from segsynth.data.preprocess import (
    PreprocessSpec,
    apply_spec,
    crop_or_pad,
    normalise_intensity,
    resize_case,
    to_slices,
)
from segsynth.errors import ConfigError


def test_zscore_over_nonzero_foreground():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 20, 20, 10), np.float32)
    img[0, 5:15, 5:15] = 300 + 40 * rng.standard_normal((10, 10, 10))
    out = normalise_intensity(img, "auto", modality="mri", file_format="nifti")
    fg = out[0, 5:15, 5:15]
    assert abs(float(fg.mean())) < 0.05 and abs(float(fg.std()) - 1) < 0.05
    assert out.dtype == np.float32


def test_unit_scaling_by_dtype_and_bit_depth():
    img8 = np.array([[[0, 51, 255]]], np.float32)
    np.testing.assert_allclose(normalise_intensity(img8, "auto", modality="photo", source_dtype="uint8"),
                               [[[0, 0.2, 1.0]]])
    img12 = np.array([[[0, 4095]]], np.float32)  # a 12-bit X-ray in a 16-bit PNG
    np.testing.assert_allclose(normalise_intensity(img12, "unit", source_dtype="uint16"), [[[0, 1.0]]])


def test_percentile_scales_to_unit_range():
    img = np.linspace(1, 100, 1000, dtype=np.float32).reshape(1, 10, 100)
    out = normalise_intensity(img, "percentile")
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_resize_keeps_mask_ids_and_records_original_shape():
    mask = np.zeros((30, 40), np.int64)
    mask[5:20, 10:30] = 2
    mask[20:25, 5:8] = 5
    case = Case("a", np.random.default_rng(0).random((3, 30, 40)).astype(np.float32), mask, {})
    out = resize_case(case, 16)
    assert out.image.shape == (3, 16, 16) and out.mask.shape == (16, 16)
    assert set(np.unique(out.mask)) <= {0, 2, 5}
    assert out.meta["original_shape"] == [30, 40]
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0


def test_crop_or_pad_centre_with_minimum_and_background():
    img = np.arange(2 * 4 * 6 * 2, dtype=np.float32).reshape(2, 4, 6, 2) + 10
    mask = np.ones((4, 6, 2), np.int64)
    out = crop_or_pad(Case("v", img, mask, {}), (6, 4, 2))
    assert out.image.shape == (2, 6, 4, 2) and out.mask.shape == (6, 4, 2)
    assert out.image[0, 0].min() == img[0].min()  # padded rows hold the channel minimum
    assert out.mask[0].sum() == 0 and out.mask[1:5].all()
    np.testing.assert_array_equal(out.image[:, 1:5], img[:, :, 1:5])
    assert out.meta["crop_pad"]["pads"][0] == [1, 1]


def test_to_slices_keeps_foreground_and_a_seeded_fraction_of_empty():
    mask = np.zeros((6, 6, 20), np.int64)
    mask[2:4, 2:4, 5:10] = 1
    vol = Case("vol", np.random.default_rng(0).random((1, 6, 6, 20)).astype(np.float32), mask, {})
    a = to_slices([vol], axis=-1, keep_empty=0.2, seed=3)
    b = to_slices([vol], axis=-1, keep_empty=0.2, seed=3)
    assert [c.case_id for c in a] == [c.case_id for c in b]
    fg = [c for c in a if c.mask.any()]
    assert len(fg) == 5 and len(a) == 5 + 3  # round(0.2 * 15) empty slices
    assert a[0].image.shape == (1, 6, 6)
    assert all(c.meta["volume_id"] == "vol" for c in a) and a[0].case_id.startswith("vol_s")
    assert len(to_slices([vol], axis=0, keep_empty=1.0)) == 6


def test_apply_spec_3d_to_2d_slices_at_working_size():
    mask = np.zeros((10, 12, 4), np.int64)
    mask[3:6, 3:6, :] = 1
    vol = Case("v", (100 + 50 * mask[None]).astype(np.float32), mask, {"dtype": "float32"})
    out = apply_spec(vol, PreprocessSpec(spatial_dims=2, size=16), modality="mri", file_format="nifti")
    assert len(out) == 4 and out[0].image.shape == (1, 16, 16)
    assert out[0].meta["normalise"] == "zscore"


def test_spec_validation():
    with pytest.raises(ConfigError):
        PreprocessSpec(normalise="fancy")
    with pytest.raises(ConfigError):
        PreprocessSpec(spatial_dims=4)
    with pytest.raises(ConfigError):
        PreprocessSpec(keep_empty_slices=2.0)


def test_batched_resize_matches_one_by_one():
    from segsynth.data.preprocess import resize_cases

    rng = np.random.default_rng(4)
    cases = [Case(f"s{i}", rng.random((1, 12, 10)).astype(np.float32), rng.integers(0, 3, (12, 10)), {})
             for i in range(3)]
    batched = resize_cases(cases, (7, 9))
    for a, b in zip(batched, [resize_case(c, (7, 9)) for c in cases]):
        np.testing.assert_allclose(a.image, b.image, atol=1e-6)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.meta == b.meta
