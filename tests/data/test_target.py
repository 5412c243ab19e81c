"""Target-site images (issue 41): the leak check (by id, by decoded pixels) and ``segsynth split-folder``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segsynth.cli import main
from segsynth.data.dataset import load_dataset
from segsynth.data.layouts import find_layout
from segsynth.data.preprocess import PreprocessSpec
from segsynth.data.split_folder import split_folder
from segsynth.data.target import check_no_leak, load_target, pixel_hash
from segsynth.errors import DataError
from tests.conftest import write_png_dataset
from tests.data.data_builders import make_msd, make_pairs
from tests.test_cli_bad_input import files_under, run_cli

SPEC = PreprocessSpec(size=32)
TINY = ["--size", "32", "--steps", "2", "--batch-size", "2", "--val-every", "2", "--unet-features", "4,4,8,8,16,4",
        "--device", "cpu", "-q", "--n", "2", "--seeds", "1", "--n-val", "1", "--no-fidelity"]


@pytest.fixture
def sites(tmp_path):
    """A labelled source site, and a second site's labelled test folder and unlabelled folder (disjoint)."""
    src = write_png_dataset(tmp_path / "source", n=6, seed=0, prefix="src")
    test = write_png_dataset(tmp_path / "site_b_test", n=4, seed=1, contrast=0.5, prefix="b")
    unl = write_png_dataset(tmp_path / "site_b_unlabelled", n=4, seed=2, contrast=0.5, prefix="u")
    shutil.rmtree(unl / "masks")  # images only, as a real unlabelled folder
    return src, test, unl


def _sweep(src, test, unl, out, methods="augment"):
    return ["sweep", "--data", src, "--test-data", test, "--target-unlabelled", unl, "--methods", methods,
            "--out", out, *TINY]


def test_a_target_image_with_the_id_of_a_test_image_is_refused_in_one_line(sites, tmp_path, capsys):
    src, test, unl = sites
    # another image under a test case's name: same id, other pixels
    Image.fromarray(np.full((32, 32), 90, np.uint8) + np.eye(32, dtype=np.uint8)).save(unl / "images" / "b002.png")
    before = files_under(tmp_path)
    code, err, _ = run_cli(_sweep(src, test, unl, tmp_path / "out"), capsys)
    assert code == 2 and len(err) == 1
    assert "b002.png" in err[0] and str(test / "images" / "b002.png") in err[0]
    assert str(unl / "images" / "b002.png") in err[0] and "id 'b002'" in err[0]
    assert "nothing tested may have been seen" in err[0]
    assert not (tmp_path / "out").exists() and files_under(tmp_path) == before


def test_a_target_image_with_the_pixels_of_a_test_image_under_another_name_is_refused(sites, tmp_path, capsys):
    src, test, unl = sites
    # the same pixels written again under another name, with another PNG compression: other file bytes
    Image.open(test / "images" / "b001.png").save(unl / "images" / "renamed.png", compress_level=0)
    assert (unl / "images" / "renamed.png").read_bytes() != (test / "images" / "b001.png").read_bytes()
    code, err, _ = run_cli(_sweep(src, test, unl, tmp_path / "out"), capsys)
    assert code == 2 and len(err) == 1
    assert str(test / "images" / "b001.png") in err[0] and str(unl / "images" / "renamed.png") in err[0]
    assert "same pixels" in err[0]


def test_a_target_image_that_is_a_case_of_the_training_data_is_refused_too(sites, tmp_path, capsys):
    src, test, unl = sites
    shutil.copyfile(src / "images" / "src003.png", unl / "images" / "copy.png")  # --data's unused cases are tested
    code, err, _ = run_cli(_sweep(src, test, unl, tmp_path / "out"), capsys)
    assert code == 2 and len(err) == 1 and "src003.png" in err[0] and "copy.png" in err[0]


def test_train_refuses_target_images_that_are_cases_of_its_data(sites, tmp_path, capsys):
    src, _, unl = sites
    shutil.copyfile(src / "images" / "src001.png", unl / "images" / "src001.png")
    code, err, _ = run_cli(["train", "--data", src, "--target-unlabelled", unl, "--method", "fixmatch_target",
                            "--out", tmp_path / "out", *TINY[:-7], "--n", "2", "--n-val", "1"], capsys)
    assert code == 2 and len(err) == 1 and "src001.png" in err[0]
    assert not (tmp_path / "out" / "model").exists()


def test_disjoint_sites_pass_and_the_target_images_are_tagged(sites):
    src, test, unl = sites
    data = load_dataset(src, SPEC)
    ext = load_dataset(test, SPEC)
    target = load_target(unl, SPEC, data.info, progress=False)
    check_no_leak(target, unl, [(test, ext.cases), (src, data.cases)])  # nothing shared: no error
    assert [t.case_id for t in target] == ["u000", "u001", "u002", "u003"]
    assert all(t.mask is None and t.meta["domain"] == "target" for t in target)


def test_constant_images_have_no_content_to_compare(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(a)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(b, compress_level=0)
    assert pixel_hash([a]) is None
    c = tmp_path / "c.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(c)
    d = tmp_path / "d.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(d, compress_level=0)
    assert pixel_hash([c]) == pixel_hash([d]) is not None


def test_grey_target_images_are_given_three_channels_for_rgb_data_and_other_counts_are_refused(tmp_path):
    rgb = load_dataset(make_pairs(tmp_path / "rgb", n=3, rgb=True), SPEC)
    grey_dir = write_png_dataset(tmp_path / "grey", n=2, prefix="g")
    target = load_target(grey_dir, SPEC, rgb.info, progress=False)
    assert target[0].image.shape == (3, 32, 32)
    vol = load_dataset(make_msd(tmp_path / "msd", n=2), PreprocessSpec(spatial_dims=3, size=None))
    with pytest.raises(DataError, match="2D but the labelled data are 3D"):
        load_target(grey_dir, SPEC, vol.info, progress=False)


# ------------------------------------------------------------------------------------------ split-folder


def _ids(folder: Path) -> list[str]:
    return [p.case_id for p in find_layout(folder).pairs]


def test_split_folder_parts_are_disjoint_deterministic_readable_and_copied_unchanged(tmp_path, capsys):
    src = write_png_dataset(tmp_path / "site", n=10, prefix="s")
    code = main(["split-folder", str(src), "--fraction", "0.5", "--seed", "3", "--out", str(tmp_path / "A"),
                 str(tmp_path / "B")])
    assert code == 0 and "A: 5 cases" in capsys.readouterr().out
    a, b = _ids(tmp_path / "A"), _ids(tmp_path / "B")
    assert len(a) == len(b) == 5 and not set(a) & set(b) and sorted(a + b) == _ids(src)
    for part in ("A", "B"):
        assert main(["check-data", str(tmp_path / part)]) == 0
        loaded = load_dataset(tmp_path / part, SPEC)
        assert loaded.info.labels == load_dataset(src, SPEC).info.labels
        for cid in _ids(tmp_path / part):
            for sub in ("images", "masks"):
                assert (tmp_path / part / sub / f"{cid}.png").read_bytes() == (src / sub / f"{cid}.png").read_bytes()
    meta = json.loads((tmp_path / "A" / "dataset.json").read_text())
    assert meta["split_folder"] == {"source": str(src), "fraction": 0.5, "seed": 3, "part": "A"}
    # the same seed gives the same parts; another seed other parts
    split_folder(src, tmp_path / "A2", tmp_path / "B2", fraction=0.5, seed=3)
    assert _ids(tmp_path / "A2") == a
    split_folder(src, tmp_path / "A3", tmp_path / "B3", fraction=0.5, seed=4)
    assert _ids(tmp_path / "A3") != a
    split_folder(src, tmp_path / "A4", tmp_path / "B4", fraction=0.3, seed=3)
    assert len(_ids(tmp_path / "A4")) == 3


def test_split_folder_keeps_the_slices_of_one_volume_together(tmp_path):
    src = make_pairs(tmp_path / "slices", n=8)
    meta = json.loads((src / "dataset.json").read_text())
    for i, p in enumerate(meta["pairs"]):
        p["volume_id"] = f"subject{i // 2}"
    (src / "dataset.json").write_text(json.dumps(meta))
    split_folder(src, tmp_path / "A", tmp_path / "B", fraction=0.5, seed=0)
    vols = {part: {p.volume_id for p in find_layout(tmp_path / part).pairs} for part in ("A", "B")}
    assert len(vols["A"]) == len(vols["B"]) == 2 and not vols["A"] & vols["B"]
    assert len(find_layout(tmp_path / "A").pairs) == 4


def test_split_folder_of_3d_volumes_is_readable(tmp_path):
    src = make_msd(tmp_path / "msd", n=4)
    split_folder(src, tmp_path / "A", tmp_path / "B", seed=1)
    spec = PreprocessSpec(spatial_dims=3, size=None)
    assert len(load_dataset(tmp_path / "A", spec).cases) == len(load_dataset(tmp_path / "B", spec).cases) == 2
    assert load_dataset(tmp_path / "B", spec).info.labels == load_dataset(src, spec).info.labels


@pytest.mark.parametrize("case", ["fraction", "missing", "inside", "same", "exists", "one_case"])
def test_split_folder_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    src = write_png_dataset(tmp_path / "site", n=4, prefix="s")
    a, b = tmp_path / "A", tmp_path / "B"
    args = {"fraction": [src, "--fraction", "1.5", "--out", a, b],
            "missing": [tmp_path / "nowhere", "--out", a, b],
            "inside": [src, "--out", src / "A", b],
            "same": [src, "--out", a, a],
            "exists": [src, "--out", a, b],
            "one_case": [write_png_dataset(tmp_path / "one", n=1), "--out", a, b]}[case]
    if case == "exists":
        b.mkdir()
        (b / "keep.txt").write_text("mine")
    before = files_under(tmp_path)
    code, err, _ = run_cli(["split-folder", *args], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("segsynth split-folder: error: ")
    assert files_under(tmp_path) == before  # nothing written, nothing half-written, nothing removed


def test_split_folder_that_fails_midway_leaves_neither_part(tmp_path, monkeypatch):
    src = write_png_dataset(tmp_path / "site", n=6, prefix="s")
    real = shutil.copyfile
    calls = []

    def failing(a, b, *args, **kw):
        calls.append(a)
        if len(calls) == 9:
            raise OSError(28, "No space left on device")
        return real(a, b, *args, **kw)

    monkeypatch.setattr("segsynth.data.split_folder.shutil.copyfile", failing)
    with pytest.raises(OSError):
        split_folder(src, tmp_path / "A", tmp_path / "B", seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no part, no hidden partial folder


def test_a_training_case_named_like_a_target_image_is_not_a_leak(sites, tmp_path):
    """Two sites may name different scans alike: --data is compared with the target by pixels, not by id."""
    src, test, unl = sites
    data = load_dataset(src, SPEC)
    shutil.copyfile(unl / "images" / "u000.png", unl / "images" / "src001.png")  # a target image named like src001
    target = load_target(unl, SPEC, data.info, progress=False)
    check_no_leak(target, unl, [(src, data.cases, False)])  # different pixels: no error
    with pytest.raises(DataError, match="has the id 'src001'"):
        check_no_leak(target, unl, [(src, data.cases)])  # a folder of the target's own site: ids count
