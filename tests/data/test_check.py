"""check_dataset: summary of a good folder, every problem of a bad one collected."""

from __future__ import annotations

import numpy as np

from segsynth.data.check import check_dataset
from segsynth.data.preprocess import PreprocessSpec
from segsynth.data.sample import sample_path
from tests.data.data_builders import make_folders, make_pairs, save_png


def test_good_folder_summary(tmp_path):
    rep = check_dataset(make_pairs(tmp_path / "p", n=4), PreprocessSpec(size=8))
    assert rep.ok and rep.layout == "pairs" and rep.n_cases == rep.n_read == 4 and rep.n_working_cases == 4
    assert rep.labels == {0: "background", 1: "lung"} and rep.value_map == {0: 0, 255: 1}
    assert rep.size_min == [20, 24] == rep.size_max and rep.channels == [1]
    assert rep.class_voxels[1] > 0 and rep.class_cases[1] == 4
    assert sum(rep.class_voxels.values()) == 4 * 20 * 24
    text = rep.format()
    assert "lung" in text and "Problems: none" in text and "xray" in text
    assert rep.to_json()["ok"] is True


def test_shipped_sample_checks_clean():
    rep = check_dataset(sample_path())
    assert rep.ok and rep.n_cases == 24 and rep.spatial_dims == [3] and len(rep.labels) == 3


def test_collects_all_problems(tmp_path):
    root = make_folders(tmp_path / "f", n=5, values=(0, 255), rgb=False)
    (root / "images" / "case0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # unreadable
    save_png(root / "masks" / "case1.png", np.zeros((8, 8), np.uint8))  # wrong size
    (root / "dataset.json").write_text('{"mask_values": {"0": "bg", "255": "fg"}}')
    bad = np.zeros((16, 16), np.uint8)
    bad[0, 0] = 7
    save_png(root / "masks" / "case2.png", bad)  # value not in the map
    rep = check_dataset(root)
    assert not rep.ok and rep.n_read == 2 and len(rep.problems) == 3
    joined = "\n".join(rep.problems)
    assert "case0.png" in joined and "case1.png" in joined and "case2.png" in joined and "7" in joined
    assert "Problems (3)" in rep.format()


def test_detected_values_warning_and_missing_folder(tmp_path):
    rep = check_dataset(make_folders(tmp_path / "f", n=2))
    assert rep.ok and rep.values_detected and any("detected" in w for w in rep.warnings)
    missing = check_dataset(tmp_path / "nope")
    assert not missing.ok and "nope" in missing.problems[0]
    assert "not recognised" in missing.format()


def test_sixteen_bit_png_is_read_whole_and_reported(tmp_path):
    root = make_folders(tmp_path / "d", n=3, rgb=False)
    for p in (root / "images").glob("*.png"):
        from PIL import Image

        save_png(p, np.asarray(Image.open(p)).astype(np.uint16) * 200)  # up to ~51000: 16 bits in use
    report = check_dataset(root)
    assert report.ok and report.dtypes == ["uint16"] and report.intensity_max > 255 * 100
    text = report.format()
    assert "16-bit images, read with their full range" in text and "/ 65535" in text


def test_flat_3d_folder_pairs_seg_files_and_images_only_claims_no_label_map(tmp_path):
    import nibabel as nib

    flat, plain = tmp_path / "flat", tmp_path / "plain"
    flat.mkdir()
    plain.mkdir()
    for i in range(3):
        mask = np.zeros((8, 8, 6), np.uint8)
        mask[2:5, 2:5, 1:4] = 1
        img = (100 + 50 * mask).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(flat / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(flat / f"case{i}_seg.nii.gz"))
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(plain / f"case{i}.nii.gz"))
    report = check_dataset(flat)
    assert report.ok and (report.n_cases, report.n_labelled) == (3, 3) and report.values_detected
    assert "detected from the masks" in report.format()
    text = check_dataset(plain).format()
    assert "Cases: 3 (0 labelled)" in text and "dataset.json" not in text and "from '" not in text
