"""benchmarks/headroom.py: which runs are points of one curve, how they are cut to its test set, and where a
recipe lands on it (records are made up; no training)."""

import pytest


def _record(method, n, seed, dice_by_case, train, val, test_set="in-domain"):
    return {"method": method, "n_train": n, "seed": seed, "status": "ok", "test_set": test_set,
            "train_ids": sorted(train), "val_ids": sorted(val), "val_dice": 0.5,
            "per_case": [{"case_id": c, "dice_mean": d, "hd95_mean": 2.0} for c, d in dice_by_case.items()],
            "dice_mean": sum(dice_by_case.values()) / len(dice_by_case)}


SPLIT = {"val": ["v1", "v2"], "train": {2: ["a", "b"], 4: ["a", "b", "c", "d"]}, "test": {"t1", "t2"}}


def test_matching_record_checks_the_split_and_cuts_to_the_test_set():
    headroom = pytest.importorskip("benchmarks.headroom")
    wide = _record("augment", 2, 0, {"t1": 0.6, "t2": 0.8, "t9": 0.0}, ["b", "a"], ["v2", "v1"])
    got = headroom.matching_record(wide, SPLIT, None)
    assert got["dice_mean"] == pytest.approx(0.7) and got["n_test"] == 2 and got["restricted_from"] == 3
    assert {c["case_id"] for c in got["per_case"]} == {"t1", "t2"}
    # other training images (not the split's first N), other validation images, an N off the curve, a test case
    # missing: refused
    assert headroom.matching_record(_record("augment", 2, 0, {"t1": 0.6, "t2": 0.8}, ["a", "c"], ["v1", "v2"]),
                                    SPLIT, None) is None
    assert headroom.matching_record(_record("augment", 2, 0, {"t1": 0.6, "t2": 0.8}, ["a", "b"], ["v1", "v3"]),
                                    SPLIT, None) is None
    assert headroom.matching_record(_record("augment", 3, 0, {"t1": 0.6, "t2": 0.8}, ["a", "b", "c"], ["v1", "v2"]),
                                    SPLIT, None) is None
    assert headroom.matching_record(_record("augment", 2, 0, {"t1": 0.6}, ["a", "b"], ["v1", "v2"]),
                                    SPLIT, None) is None
    ext = _record("augment", 4, 0, {"x1": 0.9}, ["a", "b", "c", "d"], ["v1", "v2"], test_set="shifted")
    assert headroom.matching_record(ext, SPLIT, {"x1"})["dice_mean"] == pytest.approx(0.9)
    assert headroom.matching_record(ext, SPLIT, None) is None


def test_curve_comparisons_pair_across_n_and_place_recipes():
    headroom = pytest.importorskip("benchmarks.headroom")
    records, recipe = [], []
    for seed in (0, 1):
        records.append(_record("augment", 2, seed, {"t1": 0.50, "t2": 0.52, "t3": 0.48}, ["a", "b"], SPLIT["val"]))
        records.append(_record("augment", 4, seed, {"t1": 0.60, "t2": 0.63, "t3": 0.57}, ["a", "b", "c", "d"],
                               SPLIT["val"]))
        recipe.append(_record("separate", 2, seed, {"t1": 0.55, "t2": 0.575, "t3": 0.525}, ["a", "b"], SPLIT["val"]))
    comparisons, curves = headroom.curve_comparisons(records, {"separate_aug": recipe}, [2, 4])
    pairs = {(c["method_a"], c["method_b"]): c for c in comparisons}
    assert pairs[("augment@4", "augment@2")]["mean_diff"] == pytest.approx(0.1) and pairs[
        ("augment@4", "augment@2")]["n"] == 3
    assert pairs[("separate_aug", "augment@2")]["mean_diff"] == pytest.approx(0.05)
    assert pairs[("separate_aug", "augment@4")]["mean_diff"] == pytest.approx(-0.05)
    c = curves["in-domain"]
    assert c["augment"][4]["dice_mean"] == pytest.approx(0.6) and c["augment"][2]["seeds"] == [0, 1]
    worth = c["recipes"]["separate_aug"]["worth"]
    assert worth["bound"] == "within" and worth["n"] == pytest.approx(2 ** 1.5)  # halfway in Dice: sqrt(2 * 4)
    assert "~3 labelled" in headroom.worth_text(worth, [2, 4])
