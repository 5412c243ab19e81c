"""load_dataset / load_unlabelled on every layout, the shipped sample, and the real data in ../shared."""

from __future__ import annotations

import numpy as np
import pytest

from segsynth.data.dataset import load_dataset, load_unlabelled
from segsynth.data.layouts import find_layout
from segsynth.data.preprocess import PreprocessSpec
from segsynth.data.sample import sample_path
from tests.data.data_builders import make_folders, make_msd, make_pairs


def test_msd_volumes_keep_affine_and_contiguous_ids(tmp_path):
    ds = load_dataset(make_msd(tmp_path / "m", n=3), progress=False)
    assert len(ds) == 3 and ds.info.spatial_dims == 3 and ds.info.in_channels == 1
    assert ds.info.num_classes == 3 and ds.info.modality == "mri" and ds.info.file_format == "nifti"
    c = ds.cases[0]
    assert c.image.shape == (1, 8, 8, 6) and c.image.dtype == np.float32 and c.mask.dtype == np.int64
    assert c.meta["spacing"] == pytest.approx([0.8, 0.9, 1.5])
    assert c.meta["affine"][0][3] == pytest.approx(10.0)
    assert c.meta["normalise"] == "zscore"


def test_msd_3d_as_2d_slices_carry_volume_id(tmp_path):
    spec = PreprocessSpec(spatial_dims=2, size=16, keep_empty_slices=0.0)
    ds = load_dataset(make_msd(tmp_path / "m", n=2, empty_slices=True), spec, progress=False)
    assert ds.info.spatial_dims == 2 and ds.info.extra["sliced"] and ds.info.extra["source_spatial_dims"] == 3
    assert {c.meta["volume_id"] for c in ds.cases} == {"vol_000", "vol_001"}
    assert all(c.image.shape == (1, 16, 16) and c.mask.any() for c in ds.cases)


def test_nnunet_channels_stack_into_c(tmp_path):
    ds = load_dataset(make_msd(tmp_path / "m", n=2, nnunet_v2=True, channels=2), progress=False)
    assert ds.info.in_channels == 2 and ds.cases[0].image.shape == (2, 8, 8, 6)


def test_pairs_0_255_become_class_1_and_xray_in_unit_range(tmp_path):
    ds = load_dataset(make_pairs(tmp_path / "p", n=4), PreprocessSpec(size=32), progress=False)
    assert ds.info.labels == {0: "background", 1: "lung"} and ds.info.modality == "xray"
    assert set(np.unique(np.concatenate([c.mask.ravel() for c in ds.cases]))) == {0, 1}
    assert ds.cases[0].image.shape == (1, 32, 32)
    assert all(0.0 <= c.image.min() and c.image.max() <= 1.0 for c in ds.cases)
    assert ds.cases[0].meta["original_shape"] == [20, 24]


def test_plain_folders_detected_values_rgb(tmp_path):
    ds = load_dataset(make_folders(tmp_path / "f", n=3), PreprocessSpec(size=None), progress=False)
    assert ds.info.in_channels == 3 and ds.info.num_classes == 3 and ds.info.extra["values_detected"]
    assert ds.info.extra["value_map"] == {"0": 0, "128": 1, "255": 2}
    assert ds.cases[0].image.shape == (3, 16, 16)


def test_max_cases_and_unlabelled(tmp_path):
    root = make_pairs(tmp_path / "p", n=5, rgb=True, modality="dermoscopy")
    assert len(load_dataset(root, max_cases=2, progress=False)) == 2
    imgs = load_unlabelled(root, PreprocessSpec(size=8), progress=False)
    assert len(imgs) == 5 and all(c.mask is None and c.image.shape == (3, 8, 8) for c in imgs)


def test_shipped_sample_loads_3d_and_as_2d_slices():
    root = sample_path()
    assert len(find_layout(root).pairs) == 24
    vols = load_dataset(root, max_cases=4, progress=False)
    assert vols.info.num_classes == 3 and vols.info.spatial_dims == 3 and vols.info.modality == "mri"
    assert "CC-BY-SA" in vols.info.extra["licence"]
    slices = load_dataset(root, PreprocessSpec(spatial_dims=2, size=64), max_cases=4, progress=False)
    assert slices.info.spatial_dims == 2
    assert all(c.image.shape == (1, 64, 64) for c in slices.cases)
    assert {c.meta["volume_id"] for c in slices.cases} == {c.case_id for c in vols.cases}
    assert (sample_path().parent / "ATTRIBUTION.md").is_file()


@pytest.mark.parametrize("folder,classes,channels,dims,modality,spec", [
    ("jsrt_lungs", 2, 1, 2, "xray", PreprocessSpec(size=64)),
    ("isic2017_skin", 2, 3, 2, "photo", PreprocessSpec(size=64)),
    ("kvasir_polyps", 2, 3, 2, "photo", PreprocessSpec(size=64)),
    ("aomic_brain", 4, 1, 2, "mri", PreprocessSpec(size=64)),
    ("hippocampus", 3, 1, 3, "mri", PreprocessSpec()),
    ("hippocampus", 3, 1, 2, "mri", PreprocessSpec(spatial_dims=2, size=64)),
])
def test_real_data_loads(shared_data, folder, classes, channels, dims, modality, spec):
    ds = load_dataset(shared_data / folder, spec, max_cases=12, progress=False)
    assert ds.info.num_classes == classes and ds.info.in_channels == channels
    assert ds.info.spatial_dims == dims and ds.info.modality == modality
    assert all(np.isfinite(c.image).all() and c.mask.max() < classes for c in ds.cases)
    assert all(c.image.shape[0] == channels for c in ds.cases)


@pytest.mark.parametrize("folder,n", [("jsrt_lungs", 247), ("isic2017_skin", 98), ("kvasir_polyps", 998),
                                      ("aomic_brain", 240), ("hippocampus", 208)])
def test_real_data_case_counts(shared_data, folder, n):
    assert len(find_layout(shared_data / folder).pairs) == n


def test_pairs_volume_id_groups_slices_of_one_subject(tmp_path):
    import json

    from segsynth.data.splits import split_cases

    root = make_pairs(tmp_path / "p", n=6)
    meta = json.loads((root / "dataset.json").read_text())
    for i, entry in enumerate(meta["pairs"]):
        entry["subject"] = f"sub{i // 2}"
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = load_dataset(root, progress=False)
    assert [c.meta["volume_id"] for c in ds.cases] == ["sub0", "sub0", "sub1", "sub1", "sub2", "sub2"]
    s = split_cases(ds.cases, 1, 1, seed=0)
    assert len(s.train) == 2 and len(s.test) == 2


def _write_mask_png(path, mask):
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8)).save(path)


def test_load_masks_maps_values_and_brings_masks_to_the_working_shape(tmp_path):
    from segsynth.data.dataset import load_masks

    big = np.zeros((40, 30), np.uint8)
    big[10:30, 5:25] = 255
    _write_mask_png(tmp_path / "b.png", big)
    _write_mask_png(tmp_path / "a.png", np.zeros((16, 16), np.uint8))
    masks, ids = load_masks(tmp_path, {0: 0, 255: 1}, (16, 16), progress=False)
    assert ids == ["a", "b"] and all(m.shape == (16, 16) and m.dtype == np.int64 for m in masks)
    assert set(np.unique(masks[1]).tolist()) == {0, 1} and masks[0].max() == 0
    assert abs(masks[1].mean() - big.astype(bool).mean()) < 0.05  # resized, not cropped
    assert load_masks(tmp_path, {0: 0, 255: 1}, (16, 16), max_masks=1, progress=False)[1] == ["a"]


def test_load_masks_refuses_bad_folders_and_files_naming_them(tmp_path):
    from segsynth.data.dataset import load_masks
    from segsynth.errors import DataError

    with pytest.raises(DataError, match="not found"):
        load_masks(tmp_path / "nowhere", {0: 0}, (8, 8), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no mask files"):
        load_masks(tmp_path / "empty", {0: 0}, (8, 8), progress=False)
    odd = np.zeros((8, 8), np.uint8)
    odd[2, 2] = 7
    _write_mask_png(tmp_path / "odd.png", odd)
    with pytest.raises(DataError, match=r"odd\.png.*|values 7") as err:
        load_masks(tmp_path, {0: 0, 255: 1}, (8, 8), progress=False)
    assert "odd.png" in str(err.value) and "7" in str(err.value)
    with pytest.raises(DataError, match="2D but the labelled cases are 3D"):
        load_masks(tmp_path, {0: 0, 7: 1}, (8, 8, 8), progress=False)
