"""Each bad input fails with a DataError that names the file or folder."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from segsynth.data.check import check_dataset
from segsynth.data.dataset import load_dataset
from segsynth.data.io import read_image, read_mask
from segsynth.data.splits import split_cases
from segsynth.errors import DataError
from tests.data.data_builders import make_folders, make_msd, make_pairs, png_bomb, save_nifti, save_png


def _load(root):
    return load_dataset(root, progress=False)


def test_truncated_nifti(tmp_path):
    root = make_msd(tmp_path / "m", n=2)
    p = root / "imagesTr" / "vol_001.nii.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match="vol_001.nii.gz") as e:
        _load(root)
    assert "truncated" in str(e.value)


def test_unreadable_png(tmp_path):
    root = make_pairs(tmp_path / "p", n=3)
    (root / "images" / "img01.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="img01.png"):
        _load(root)


def test_empty_file_and_missing_listed_file(tmp_path):
    root = make_pairs(tmp_path / "p", n=3)
    (root / "masks" / "img02.png").write_bytes(b"")
    with pytest.raises(DataError, match="img02.png.*empty|empty.*img02.png"):
        _load(root)
    (root / "masks" / "img02.png").unlink()
    with pytest.raises(DataError, match="img02.png: file not found"):
        _load(root)


def test_truncated_gzip_stream(tmp_path):
    raw = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_bytes()
    (tmp_path / "t.nii.gz").write_bytes(gzip.compress(raw)[:-40])
    with pytest.raises(DataError, match="t.nii.gz"):
        read_image(tmp_path / "t.nii.gz")


def test_image_mask_size_mismatch(tmp_path):
    root = make_pairs(tmp_path / "p", n=3)
    save_png(root / "masks" / "img00.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="img00.png") as e:
        _load(root)
    assert "does not match" in str(e.value)


def test_nifti_affine_mismatch(tmp_path):
    root = make_msd(tmp_path / "m", n=2)
    mask = np.asarray(nib.load(str(root / "labelsTr" / "vol_000.nii.gz")).dataobj)
    save_nifti(root / "labelsTr" / "vol_000.nii.gz", mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(DataError, match="labelsTr/vol_000.nii.gz") as e:
        _load(root)
    assert "same space" in str(e.value)


def test_mask_value_not_in_map(tmp_path):
    root = make_pairs(tmp_path / "p", n=3)
    m = np.zeros((20, 24), np.uint8)
    m[2:5, 2:5] = 128
    save_png(root / "masks" / "img02.png", m)
    with pytest.raises(DataError, match="img02.png") as e:
        _load(root)
    assert "128" in str(e.value) and "not in the label map" in str(e.value)


def test_nan_intensities(tmp_path):
    root = make_msd(tmp_path / "m", n=2)
    img = np.ones((8, 8, 6), np.float32)
    img[1, 2, 3] = np.nan
    save_nifti(root / "imagesTr" / "vol_001.nii.gz", img)
    with pytest.raises(DataError, match="vol_001.nii.gz") as e:
        _load(root)
    assert "NaN" in str(e.value)


def test_empty_dataset(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DataError, match="empty"):
        _load(root)
    (root / "dataset.json").write_text(json.dumps({"pairs": [], "mask_values": {"0": "bg"}}))
    with pytest.raises(DataError, match=str(root)):
        _load(root)


def test_more_labelled_cases_than_exist(tmp_path):
    root = make_folders(tmp_path / "lungs", n=4)
    ds = _load(root)
    with pytest.raises(DataError, match="lungs") as e:
        split_cases(ds.cases, n_train=8, n_val=1, seed=0)
    assert "8 training" in str(e.value) and "only 4" in str(e.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no_such_dataset") as e:
        _load(tmp_path / "no_such_dataset")
    assert "not found" in str(e.value)


def test_broken_dataset_json(tmp_path):
    root = make_pairs(tmp_path / "p", n=2)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json"):
        _load(root)


@pytest.mark.parametrize("where", ["images", "masks"])
def test_png_decompression_bomb_is_refused_unread(tmp_path, where):
    root = make_pairs(tmp_path / "p", n=3)
    bomb = png_bomb(root / where / "img01.png")
    with pytest.raises(DataError, match="decompression bomb") as e:
        (read_image if where == "images" else read_mask)(bomb)
    assert str(bomb) in str(e.value) and "10000000000 pixels" in str(e.value)
    with pytest.raises(DataError, match=f"{where}/img01.png: image header claims"):
        _load(root)
    report = check_dataset(root)
    assert any("img01.png" in p and "decompression bomb" in p for p in report.problems)


@pytest.mark.parametrize("path", ["../outside.png", "images/../../outside.png", "/etc/passwd", "~/x.png"])
def test_pairs_paths_must_stay_inside_the_dataset(tmp_path, path):
    root = make_pairs(tmp_path / "p", n=3)
    save_png(tmp_path / "outside.png", np.zeros((20, 24), np.uint8))
    meta = json.loads((root / "dataset.json").read_text())
    meta["pairs"][1]["mask"] = path
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="dataset.json: pairs entry 1 mask") as e:
        _load(root)
    assert path in str(e.value) and ("leaves the dataset folder" in str(e.value) or "absolute" in str(e.value))
    meta["pairs"][1]["mask"] = "masks/./img01.png"  # inside, only spelled oddly: fine
    (root / "dataset.json").write_text(json.dumps(meta))
    assert len(_load(root).cases) == 3


def test_symbolic_link_loop_is_named(tmp_path):
    root = make_pairs(tmp_path / "p", n=3)
    link = root / "images" / "img01.png"
    link.unlink()
    os.symlink("img01.png", link)
    with pytest.raises(DataError, match="img01.png: symbolic link loop"):
        _load(root)
    folders = make_folders(tmp_path / "f", n=3)  # images/ + masks/: the loop is listed, not skipped
    (folders / "images" / "case1.png").unlink()
    os.symlink("case1.png", folders / "images" / "case1.png")
    with pytest.raises(DataError, match="case1.png: symbolic link loop"):
        _load(folders)
    (folders / "images" / "case1.png").unlink()
    os.symlink("gone.png", folders / "images" / "case1.png")
    with pytest.raises(DataError, match="case1.png: broken symbolic link"):
        _load(folders)


def test_all_background_masks_are_refused(tmp_path):
    root = make_pairs(tmp_path / "p", n=3)
    for p in (root / "masks").glob("*.png"):
        save_png(p, np.zeros((20, 24), np.uint8))
    with pytest.raises(DataError, match="background only") as e:
        _load(root)
    assert str(root) in str(e.value)
    report = check_dataset(root)  # check-data reads them all and reports the same problem train refuses
    assert report.n_read == 3 and report.problems == [str(e.value)]
