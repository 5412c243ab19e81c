"""Dice and HD95 against hand-computed values on tiny masks (MONAI underneath)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from segsynth.data.case import Case
from segsynth.evaluate.metrics import (
    case_metrics,
    case_spacing,
    evaluate_cases,
    summarise_cases,
    write_metrics,
)

LABELS = {0: "background", 1: "a", 2: "b"}


def _square(shape, rows, cols, value=1, out=None):
    m = np.zeros(shape, dtype=np.int64) if out is None else out
    m[rows[0] : rows[1], cols[0] : cols[1]] = value
    return m


def test_identical_masks_dice_one_hd_zero():
    t = _square((10, 10), (2, 6), (2, 6))
    _square((10, 10), (7, 9), (7, 9), 2, out=t)
    r = case_metrics(t.copy(), t, LABELS)
    assert r["dice"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert r["hd95"] == {"a": pytest.approx(0.0), "b": pytest.approx(0.0)}
    assert r["dice_mean"] == pytest.approx(1.0) and r["hd95_mean"] == pytest.approx(0.0)


def test_shifted_square_hand_computed():
    # 4x4 squares shifted by 2 columns: overlap 4x2=8 px, Dice = 2*8/(16+16) = 0.5.
    # Edge pixels of one square lie 0..2 px from the other's edge; the 95th percentile of those is 2.
    t = _square((10, 10), (2, 6), (2, 6))
    p = _square((10, 10), (2, 6), (4, 8))
    r = case_metrics(p, t, {0: "bg", 1: "a"})
    assert r["dice"]["a"] == pytest.approx(0.5)
    assert r["hd95"]["a"] == pytest.approx(2.0)


def test_single_pixel_distance_and_spacing():
    # One pixel each, 3 columns apart: HD95 = 3 px; with 0.5 mm column spacing = 1.5 mm; with
    # anisotropic spacing along the other axis only, unchanged.
    t = np.zeros((10, 10), dtype=np.int64)
    p = np.zeros((10, 10), dtype=np.int64)
    t[5, 5] = 1
    p[5, 8] = 1
    labels = {0: "bg", 1: "a"}
    assert case_metrics(p, t, labels)["hd95"]["a"] == pytest.approx(3.0)
    assert case_metrics(p, t, labels, spacing=(2.0, 0.5))["hd95"]["a"] == pytest.approx(1.5)
    assert case_metrics(p, t, labels, spacing=(0.5, 1.0))["hd95"]["a"] == pytest.approx(3.0)
    assert case_metrics(p, t, labels, spacing=2.0)["hd95"]["a"] == pytest.approx(6.0)
    assert case_metrics(p, t, labels)["dice"]["a"] == 0.0
    assert case_metrics(p, t, labels)["hd95_unit"] == "voxel"
    assert case_metrics(p, t, labels, spacing=2.0)["hd95_unit"] == "mm"


def test_3d_with_spacing():
    t = np.zeros((8, 8, 8), dtype=np.int64)
    p = np.zeros((8, 8, 8), dtype=np.int64)
    t[2, 4, 4] = 1
    p[5, 4, 4] = 1  # 3 voxels apart along axis 0
    r = case_metrics(p, t, {0: "bg", 1: "x"}, spacing=(1.5, 1.0, 1.0))
    assert r["hd95"]["x"] == pytest.approx(4.5)


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), dtype=np.int64)
    blob = _square((8, 8), (2, 4), (2, 4))
    labels = {0: "bg", 1: "a"}
    both = case_metrics(empty, empty.copy(), labels)
    assert both["dice"]["a"] == 1.0 and both["hd95"]["a"] == 0.0 and both["hd95_missing"] == 0
    missed = case_metrics(empty, blob, labels)  # prediction empty, target not
    assert missed["dice"]["a"] == 0.0 and missed["hd95"]["a"] is None
    assert missed["hd95_mean"] is None and missed["hd95_missing"] == 1
    spurious = case_metrics(blob, empty, labels)  # target empty, prediction not
    assert spurious["dice"]["a"] == 0.0 and spurious["hd95"]["a"] is None


def test_class_means_skip_missing_hd95():
    # Class a perfect; class b absent from the prediction (Dice 0, HD95 missing).
    t = _square((10, 10), (1, 4), (1, 4))
    _square((10, 10), (6, 9), (6, 9), 2, out=t)
    p = _square((10, 10), (1, 4), (1, 4))
    r = case_metrics(p, t, {"0": "bg", "1": "a", "2": "b"})  # JSON-style string keys work too
    assert list(r["dice"]) == ["a", "b"]
    assert r["dice_mean"] == pytest.approx(0.5)
    assert r["hd95_mean"] == pytest.approx(0.0) and r["hd95_missing"] == 1


def test_classes_do_not_mix():
    # Prediction swaps classes 1 and 2: each class has Dice 0 although the foreground is identical.
    t = _square((10, 10), (1, 4), (1, 4))
    _square((10, 10), (6, 9), (6, 9), 2, out=t)
    p = np.where(t == 1, 2, np.where(t == 2, 1, 0))
    r = case_metrics(p, t, LABELS)
    assert r["dice"] == {"a": 0.0, "b": 0.0}


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int), LABELS)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), LABELS, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="foreground"):
        case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), {0: "bg"})


def test_evaluate_cases_and_write(tmp_path):
    t0 = _square((10, 10), (2, 6), (2, 6))
    t1 = np.zeros((10, 10), dtype=np.int64)
    t1[5, 5] = 1
    cases = [
        Case("c0", np.zeros((1, 10, 10), np.float32), t0, {}),
        Case("c1", np.zeros((1, 10, 10), np.float32), t1, {"spacing": [2.0, 0.5]}),
    ]
    p1 = np.zeros_like(t1)
    p1[5, 8] = 1
    preds = {"c1": p1, "c0": _square((10, 10), (2, 6), (4, 8))}  # keyed by case id, any order
    rows = evaluate_cases(preds, cases, {0: "bg", 1: "a"})
    assert [r["case_id"] for r in rows] == ["c0", "c1"]
    assert rows[0]["dice"]["a"] == pytest.approx(0.5) and rows[0]["hd95_unit"] == "voxel"
    assert rows[1]["hd95"]["a"] == pytest.approx(1.5) and rows[1]["hd95_unit"] == "mm"
    assert evaluate_cases([preds["c0"], p1], cases, {0: "bg", 1: "a"}) == rows
    with pytest.raises(ValueError, match="no prediction"):
        evaluate_cases({"c0": p1}, cases, {0: "bg", 1: "a"})

    # A third case with a missed class: HD95 is an empty CSV cell and null in JSON.
    rows.append({"case_id": "c2", **case_metrics(np.zeros_like(t0), t0, {0: "bg", 1: "a"})})
    csv_path, json_path = write_metrics(rows, tmp_path / "out")
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case_id"] for r in table] == ["c0", "c1", "c2"]
    assert float(table[0]["dice_a"]) == pytest.approx(0.5)
    assert table[2]["hd95_a"] == "" and table[2]["hd95_mean"] == ""
    data = json.loads(json_path.read_text())
    assert data["cases"][2]["hd95"]["a"] is None
    assert data["summary"]["n_cases"] == 3 and data["summary"]["hd95_missing"] == 1
    assert data["summary"]["dice_mean"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert data["summary"]["hd95"]["a"] == pytest.approx((2.0 + 1.5) / 2)  # the missing one is left out
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    assert math.isclose(summarise_cases(rows)["dice"]["a"], data["summary"]["dice"]["a"])


def test_case_spacing_follows_preprocessing():
    img2, img3 = np.zeros((1, 8, 8), np.float32), np.zeros((1, 4, 8, 8), np.float32)
    m2, m3 = np.zeros((8, 8), np.int64), np.zeros((4, 8, 8), np.int64)
    assert case_spacing(Case("a", img2, m2, {"format": "png", "spacing": [1.0, 1.0]})) is None  # pixels
    assert case_spacing(Case("b", img3, m3, {"format": "nifti", "spacing": [3.0, 1.0, 1.0]})) == (
        3.0,
        1.0,
        1.0,
    )
    # A 16x16 NIfTI image of 0.5 mm pixels resized to 8x8 has 1 mm pixels.
    resized = {"format": "nifti", "spacing": [0.5, 0.5], "original_shape": [16, 16], "resized_to": [8, 8]}
    assert case_spacing(Case("c", img2, m2, resized)) == (1.0, 1.0)
    # A slice along axis 0 of a (2.0, 0.5, 0.25) mm volume of 30x16x32 voxels, resized to 8x8.
    sliced = {
        "format": "nifti",
        "spacing": [2.0, 0.5, 0.25],
        "slice_axis": 0,
        "original_shape": [16, 32],
        "resized_to": [8, 8],
    }
    assert case_spacing(Case("d", img2, m2, sliced)) == (1.0, 1.0)
    # The data layer's own array spacing wins; spacing of the wrong length is not guessed.
    assert case_spacing(Case("e", img2, m2, {**sliced, "array_spacing": [0.7, 0.7]})) == (0.7, 0.7)
    assert case_spacing(Case("f", img2, m2, {"format": "nifti", "spacing": [1.0, 1.0, 1.0]})) is None
