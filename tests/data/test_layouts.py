"""Layout detection: MSD, nnU-Net v2 (_0000 channels), dataset.json pairs + mask_values, plain folders."""

from __future__ import annotations

import json

import pytest

from segsynth.data.layouts import find_layout, guess_modality
from segsynth.errors import DataError
from tests.data.data_builders import make_folders, make_msd, make_pairs, save_png


def test_msd_layout(tmp_path):
    lay = find_layout(make_msd(tmp_path / "msd", n=3))
    assert lay.kind == "msd" and lay.name == "tiny_msd"
    assert [p.case_id for p in lay.pairs] == ["vol_000", "vol_001", "vol_002"]
    assert lay.labels == {0: "background", 1: "anterior", 2: "posterior"}
    assert lay.value_map == {0: 0, 1: 1, 2: 2}
    assert lay.modality == "mri" and not lay.values_detected
    assert lay.pairs[0].mask.name == "vol_000.nii.gz"


def test_nnunet_v2_name_to_id_labels_and_channel_files(tmp_path):
    lay = find_layout(make_msd(tmp_path / "v2", n=2, nnunet_v2=True, channels=2,
                               modality={"0": "T2", "1": "ADC"}))
    assert lay.kind == "msd"
    assert lay.labels == {0: "background", 1: "anterior", 2: "posterior"}
    assert [p.name for p in lay.pairs[0].images] == ["vol_000_0000.nii.gz", "vol_000_0001.nii.gz"]
    assert lay.pairs[0].case_id == "vol_000"
    assert lay.modality == "mri"


def test_msd_training_list_with_channel_suffix_files(tmp_path):
    lay = find_layout(make_msd(tmp_path / "v1", n=2, channels=2))
    assert len(lay.pairs[1].images) == 2  # listed "vol_001.nii.gz" resolved to _0000 and _0001


def test_pairs_layout_mask_values_255_becomes_class_1(tmp_path):
    lay = find_layout(make_pairs(tmp_path / "p", n=3))
    assert lay.kind == "pairs"
    assert lay.value_map == {0: 0, 255: 1}
    assert lay.labels == {0: "background", 1: "lung"}
    assert lay.modality == "xray"


def test_plain_folders_detect_values_and_match_mask_suffixes(tmp_path):
    root = make_folders(tmp_path / "f", n=3, values=(0, 128, 255), mask_dir="labels", mask_suffix="_mask")
    lay = find_layout(root)
    assert lay.kind == "folders" and lay.values_detected
    assert lay.value_map == {0: 0, 128: 1, 255: 2}
    assert lay.labels[0] == "background" and len(lay.labels) == 3
    assert lay.modality == "photo"  # RGB PNG without modality text
    assert lay.pairs[0].mask.name == "case0_mask.png"
    assert "detected from the masks" in lay.describe()


def test_images_only_needs_unlabelled_ok(tmp_path):
    root = make_folders(tmp_path / "f", n=2)
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    with pytest.raises(DataError, match="no masks"):
        find_layout(root)
    lay = find_layout(root, unlabelled_ok=True)
    assert lay.kind == "images_only" and all(p.mask is None for p in lay.pairs)


def test_unmatched_image_is_reported_by_name(tmp_path):
    root = make_folders(tmp_path / "f", n=2)
    (root / "masks" / "case1.png").unlink()
    with pytest.raises(DataError, match="case1.png"):
        find_layout(root)


def test_dataset_json_without_pairs_names_a_folder_layout(tmp_path):
    root = make_folders(tmp_path / "f", n=2, values=(0, 1))
    (root / "dataset.json").write_text(json.dumps({"name": "named", "modality": "dermoscopy",
                                                   "mask_values": {"0": "bg", "1": "lesion"}}))
    lay = find_layout(root)
    assert lay.kind == "folders" and lay.name == "named" and not lay.values_detected
    assert lay.labels == {0: "bg", 1: "lesion"} and lay.modality == "photo"


def test_grey_png_without_text_is_other(tmp_path):
    root = tmp_path / "g"
    import numpy as np

    save_png(root / "images" / "a.png", np.zeros((4, 4), np.uint8))
    save_png(root / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    assert find_layout(root).modality == "other"


@pytest.mark.parametrize("text,expected", [
    ("T1 MRI axial slices (grey, 256x256)", "mri"), ({"0": "MRI"}, "mri"), ({"0": "FLAIR", "1": "T1w"}, "mri"),
    ("chest X-ray (grey, 224x224)", "xray"), ("CT", "ct"), ({"0": "CT"}, "ct"),
    ("dermoscopy (RGB, 256x192)", "photo"), ("colonoscopy (RGB JPEG)", "photo"), ({"0": "R", "1": "G", "2": "B"}, "photo"),
    ("ultrasound", "other"), ("something else", ""), (None, ""),
])
def test_guess_modality(text, expected):
    assert guess_modality(text) == expected


def test_bids_named_slices_are_grouped_by_subject(tmp_path):
    from PIL import Image as _Image

    from segsynth.data.layouts import find_layout as _find

    for sub in ("sub-01", "sub-02"):
        for k in range(3):
            for folder in ("images", "masks"):
                (tmp_path / folder).mkdir(exist_ok=True)
                _Image.fromarray(__import__("numpy").zeros((8, 8), "uint8")).save(tmp_path / folder / f"{sub}_ax{k:03d}.png")
    layout = _find(tmp_path)
    assert {p.volume_id for p in layout.pairs} == {"sub-01", "sub-02"}
