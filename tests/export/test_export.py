"""nnU-Net v2 raw and MSD export: layouts, dataset.json, and a lossless round trip through load_dataset."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.dataset import load_dataset
from segsynth.data.preprocess import PreprocessSpec
from segsynth.errors import DataError
from segsynth.export.msd import export_msd
from segsynth.export.nnunet import export_nnunet
from tests.conftest import make_blob_case

INFO_2D = DatasetInfo("blobs", {0: "background", 1: "CSF", 2: "grey matter"}, "mri", 2, 1)
NATIVE = PreprocessSpec(size=None, normalise="none")


def _cases_2d(n=3):
    return [make_blob_case(f"case {i}", (16, 16), num_classes=3, seed=i) for i in range(n)]


def _by_mask(cases):
    return sorted(cases, key=lambda c: c.mask.tobytes())


def test_nnunet_layout_and_round_trip(tmp_path):
    cases = _cases_2d()
    unl = make_blob_case("extra", (16, 16), num_classes=3, seed=9)
    unl.mask = None
    out = export_nnunet(cases + [unl], tmp_path / "raw", dataset_id=7, name="Blob Set", info=INFO_2D)
    assert out.name == "Dataset007_Blob_Set"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "MRI"}
    assert dj["labels"] == {"background": 0, "CSF": 1, "grey matter": 2}
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz" and dj["numTest"] == 1
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"case_{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"case_{i}.nii.gz" for i in range(3)]
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["extra_0000.nii.gz"]
    back = load_dataset(out, NATIVE, progress=False)
    assert back.info.labels == INFO_2D.labels
    for a, b in zip(_by_mask(cases), _by_mask(back.cases)):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.image, b.image, atol=1e-6)
    with pytest.raises(DataError):
        export_nnunet(cases, tmp_path / "raw", dataset_id=7, name="Blob Set", info=INFO_2D)


def test_nnunet_multichannel_3d_one_file_per_channel(tmp_path):
    cases = [make_blob_case(f"v{i}", (8, 8, 8), channels=2, num_classes=2, seed=i) for i in range(2)]
    info = DatasetInfo("vol", {0: "background", 1: "lesion"}, "mri", 3, 2)
    out = export_nnunet(cases, tmp_path, dataset_id=12, info=info)
    names = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert names == ["v0_0000.nii.gz", "v0_0001.nii.gz", "v1_0000.nii.gz", "v1_0001.nii.gz"]
    assert nib.load(out / "imagesTr" / "v0_0001.nii.gz").shape == (8, 8, 8)
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "MRI0", "1": "MRI1"}
    back = load_dataset(out, NATIVE, progress=False)
    assert back.info.in_channels == 2
    np.testing.assert_allclose(back.cases[0].image, cases[0].image, atol=1e-6)


def test_msd_layout_and_round_trip(tmp_path):
    cases = [make_blob_case(f"v{i}", (8, 8, 8), channels=2, num_classes=3, seed=i) for i in range(2)]
    info = DatasetInfo("vol", {0: "background", 1: "a", 2: "b"}, "mri", 3, 2)
    out = export_msd(cases, tmp_path / "Task501_Vol", info=info)
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["tensorImageSize"] == "4D" and dj["modality"] == {"0": "MRI0", "1": "MRI1"}
    assert dj["labels"] == {"0": "background", "1": "a", "2": "b"}
    assert dj["numTraining"] == 2 and dj["training"][0] == {"image": "./imagesTr/v0.nii.gz",
                                                            "label": "./labelsTr/v0.nii.gz"}
    assert nib.load(out / "imagesTr" / "v0.nii.gz").shape == (8, 8, 8, 2)
    back = load_dataset(out, NATIVE, progress=False)
    for a, b in zip(cases, back.cases):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.image, b.image, atol=1e-6)


def test_export_a_synthetic_dataset_folder_keeps_provenance(tmp_path):
    from segsynth.data.writer import DatasetWriter

    src = tmp_path / "synthetic"
    with DatasetWriter(src, INFO_2D, fmt="nifti", provenance={"method": "brainspade", "seed": 3}) as w:
        for c in _cases_2d():
            c.case_id = c.case_id.replace(" ", "")
            c.meta = {"method": "brainspade", "seed": 1, "style_source": "x"}
            w.add(c)
    nn = export_nnunet(src, tmp_path / "raw", dataset_id=501)
    msd = export_msd(src, tmp_path / "msd")
    for out in (nn, msd):
        assert (out / "provenance.jsonl").exists()
        assert json.loads((out / "dataset.json").read_text())["synthetic"]["method"] == "brainspade"
    assert json.loads((nn / "dataset.json").read_text())["numTraining"] == 3
    assert len(load_dataset(msd, NATIVE, progress=False).cases) == 3


def test_png_export_for_unit_range_2d(tmp_path):
    cases = []
    for c in _cases_2d(2):
        c.image = np.clip(c.image, 0, 1)
        cases.append(c)
    out = export_nnunet(cases, tmp_path, dataset_id=3, info=INFO_2D, file_ending=".png")
    assert (out / "imagesTr" / "case_0_0000.png").exists() and (out / "labelsTr" / "case_0.png").exists()
    bad = [Case("z", cases[0].image * 5, cases[0].mask)]
    with pytest.raises(DataError):
        export_nnunet(bad, tmp_path, dataset_id=4, info=INFO_2D, file_ending=".png")


def test_unique_safe_ids_never_collide():
    from segsynth.export import unique_safe_id

    used: set[str] = set()
    ids = [unique_safe_id(c, used) for c in ["a/b", "a_b", "a b", "..", "x"]]
    assert ids == ["a_b", "a_b_1", "a_b_2", "case", "x"] and used == set(ids)
