"""Paired tests, mean ± sd and CIs against hand-computed values, degenerate inputs, run summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from segsynth.evaluate.stats import (
    ci95,
    compare_methods,
    labelled_equivalent,
    mean_sd,
    paired_tests,
    summarise_runs,
)

# Differences a - b = [0.3, -0.1, 0.5, 0.7, 0.2, 0.9]: |d| ranks 3,1,4,5,2,6 -> W- = 1, W+ = 20.
A = [1.3, 2.0, 3.5, 4.7, 5.2, 6.9]
B = [1.0, 2.1, 3.0, 4.0, 5.0, 6.0]


def test_mean_sd_and_ci():
    m, sd = mean_sd([1.0, 2.0, 3.0, None, float("nan")])
    assert m == pytest.approx(2.0) and sd == pytest.approx(1.0)
    lo, hi = ci95([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2}
    assert (lo, hi) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert math.isnan(mean_sd([0.7])[1]) and mean_sd([0.7])[0] == pytest.approx(0.7)
    assert all(math.isnan(v) for v in mean_sd([]))
    assert all(math.isnan(v) for v in ci95([0.5]))


def test_paired_tests_known_values():
    r = paired_tests(A, B)
    assert r["n"] == 6 and r["n_dropped"] == 0 and r["reason"] == ""
    # Exact signed-rank: P(W <= 1) = 2/64 for n = 6 (the empty set and {1}); two-sided doubles it.
    assert r["wilcoxon_stat"] == pytest.approx(1.0)
    assert r["wilcoxon_p"] == pytest.approx(4 / 64)
    d = np.subtract(A, B)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(6))
    assert r["ttest_stat"] == pytest.approx(t)
    assert r["ttest_p"] == pytest.approx(2 * sps.t.sf(abs(t), 5))
    assert r["mean_diff"] == pytest.approx(2.5 / 6)
    half = sps.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert r["ci95_low"] == pytest.approx(2.5 / 6 - half) and r["ci95_high"] == pytest.approx(2.5 / 6 + half)
    # Swapping the methods flips the sign but not the p-values.
    s = paired_tests(B, A)
    assert s["mean_diff"] == pytest.approx(-r["mean_diff"]) and s["wilcoxon_p"] == pytest.approx(
        r["wilcoxon_p"]
    )
    assert s["ttest_p"] == pytest.approx(r["ttest_p"])


def test_paired_tests_degenerate():
    few = paired_tests([0.5], [0.4])
    assert few["n"] == 1 and math.isnan(few["wilcoxon_p"]) and math.isnan(few["ttest_p"])
    assert "fewer than 2" in few["reason"] and few["mean_diff"] == pytest.approx(0.1)
    none = paired_tests([], [])
    assert none["n"] == 0 and math.isnan(none["mean_diff"]) and "fewer than 2" in none["reason"]

    same = paired_tests([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert math.isnan(same["wilcoxon_p"]) and math.isnan(same["ttest_p"]) and "zero" in same["reason"]
    assert same["ci95_low"] == 0.0 and same["ci95_high"] == 0.0

    # Constant non-zero differences (up to rounding): Wilcoxon fine, t undefined.
    const = paired_tests([0.93, 0.83, 0.73, 0.63, 0.53], [0.90, 0.80, 0.70, 0.60, 0.50])
    assert const["wilcoxon_p"] == pytest.approx(2 / 32)  # all 5 positive: exact two-sided 2 * 1/32
    assert math.isnan(const["ttest_p"]) and "zero variance" in const["reason"]
    assert const["ci95_low"] == pytest.approx(0.03) and const["ci95_high"] == pytest.approx(0.03)

    # Ties and zero differences: zeros are dropped, the test still runs (normal approximation).
    tied = paired_tests([1, 2, 3, 4, 5, 6, 7], [1, 1, 2, 3, 4, 5, 7])
    assert 0 < tied["wilcoxon_p"] < 1 and math.isfinite(tied["ttest_p"]) and tied["reason"] == ""

    # Missing values drop their pair.
    dropped = paired_tests([*A, None, float("nan")], [*B, 0.5, 0.5])
    assert dropped["n"] == 6 and dropped["n_dropped"] == 2
    assert dropped["wilcoxon_p"] == pytest.approx(4 / 64)

    with pytest.raises(ValueError, match="equal lengths"):
        paired_tests([1.0, 2.0], [1.0])


def _record(method, n, seed, case_dice, status="ok"):
    if status != "ok":
        return {
            "dataset": "d",
            "test_set": "d",
            "method": method,
            "n_train": n,
            "seed": seed,
            "segmenter": "unet",
            "status": "failed",
            "error": "boom",
        }
    per_case = [
        {"case_id": cid, "dice": {"a": v}, "hd95": {"a": 1.0}, "dice_mean": v, "hd95_mean": 1.0}
        for cid, v in case_dice.items()
    ]
    return {
        "dataset": "d",
        "test_set": "d",
        "method": method,
        "n_train": n,
        "seed": seed,
        "segmenter": "unet",
        "labels": {"1": "a"},
        "dice_mean": float(np.mean(list(case_dice.values()))),
        "hd95_mean": 1.0,
        "seconds": 10.0 + seed,
        "train_seconds": 8.0,
        "peak_memory_mb": 100.0,
        "per_case": per_case,
        "status": "ok",
    }


def test_summarise_runs_and_compare():
    recs = [
        _record("none", 1, 0, {"x": 0.5, "y": 0.6}),
        _record("none", 1, 1, {"x": 0.7, "y": 0.8}),
        _record("none", 1, 2, {}, status="failed"),
        _record("gen", 1, 0, {"x": 0.6, "y": 0.9, "z": 0.1}),  # z has no partner under "none"
        _record("gen", 1, 1, {"x": 0.8, "y": 0.85}),
        _record("gen", 2, 0, {"x": 0.9}),
    ]
    rows = summarise_runs(recs)
    assert [(r["method"], r["n_train"]) for r in rows] == [("none", 1), ("gen", 1), ("gen", 2)]
    none1 = rows[0]
    assert none1["n_runs"] == 2 and none1["n_failed"] == 1 and none1["seeds"] == [0, 1]
    assert none1["mean"] == pytest.approx(0.65) and none1["sd"] == pytest.approx(math.sqrt(0.02))
    assert none1["seconds"] == pytest.approx(10.5) and none1["peak_memory_mb"] == pytest.approx(100.0)
    assert math.isnan(rows[2]["sd"]) and math.isnan(rows[2]["ci95_low"])  # one seed only

    raw = compare_methods(recs, "gen", "none", 1, unit="seed_case")
    # Pairs (seed, case): (0,x) .6/.5, (0,y) .9/.6, (1,x) .8/.7, (1,y) .85/.8 -> diffs .1 .3 .1 .05
    assert raw["n"] == 4 and raw["n_seeds"] == 2 and raw["unit"] == "seed_case"
    assert raw["mean_diff"] == pytest.approx((0.1 + 0.3 + 0.1 + 0.05) / 4)
    res = compare_methods(recs, "gen", "none", 1)
    # Per case, averaged over seeds: x (.6+.8)/2 vs (.5+.7)/2 -> .1; y (.9+.85)/2 vs (.6+.8)/2 -> .175
    assert res["unit"] == "case" and res["n"] == 2 and res["n_seed_case_pairs"] == 4
    assert res["mean_a"] == pytest.approx((0.7 + 0.875) / 2) and res["mean_diff"] == pytest.approx(0.1375)
    # Seed level: seed 0 mean diff (.1+.3)/2 = .2, seed 1 (.1+.05)/2 = .075
    assert res["seed_mean_diffs"] == pytest.approx([0.2, 0.075])
    assert 0 < res["seed_ttest_p"] < 1
    with pytest.raises(ValueError):
        compare_methods(recs, "gen", "none", 1, unit="volume")
    assert res["method_a"] == "gen" and res["method_b"] == "none"
    missing = compare_methods(recs, "gen", "none", 2)
    assert missing["n"] == 0 and math.isnan(missing["wilcoxon_p"])


def test_compare_methods_uses_volumes_of_slices_as_units():
    def rec(method, seed, dice):
        r = _record(method, 1, seed, dice)
        for c in r["per_case"]:
            c["volume_id"] = c["case_id"].split("_s")[0]
        return r

    recs = [rec("none", 0, {"v1_s0": 0.5, "v1_s1": 0.7, "v2_s0": 0.4}),
            rec("gen", 0, {"v1_s0": 0.6, "v1_s1": 0.9, "v2_s0": 0.5})]
    res = compare_methods(recs, "gen", "none", 1)
    # v1: slices averaged (0.75 vs 0.6), v2: 0.5 vs 0.4 -> two units
    assert res["n"] == 2 and res["n_seed_case_pairs"] == 3
    assert res["mean_diff"] == pytest.approx((0.15 + 0.1) / 2)


def test_labelled_equivalent_interpolates_in_log_n():
    """A value halfway (in Dice) between the curve's points at 32 and 64 labels is worth sqrt(32 * 64) ~ 45.3
    labels; points on the curve give their own N; values off the curve and falling curves give no N."""
    n, d = [32, 64, 128], [0.50, 0.56, 0.60]
    got = labelled_equivalent(n, d, 0.53)
    assert got["bound"] == "within" and got["n"] == pytest.approx(math.sqrt(32 * 64))
    assert labelled_equivalent(n, d, 0.56) == {"n": 64.0, "bound": "within"}
    assert labelled_equivalent(n, d, 0.50) == {"n": 32.0, "bound": "within"}
    assert labelled_equivalent(n, d, 0.58)["n"] == pytest.approx(math.sqrt(64 * 128))
    assert labelled_equivalent([128, 32, 64], [0.60, 0.50, 0.56], 0.53)["n"] == pytest.approx(math.sqrt(32 * 64))
    assert labelled_equivalent(n, d, 0.49) == {"n": None, "bound": "below"}
    assert labelled_equivalent(n, d, 0.61) == {"n": None, "bound": "above"}
    assert labelled_equivalent(n, [0.50, 0.58, 0.56], 0.53) == {"n": None, "bound": "not_monotone"}
    with pytest.raises(ValueError):
        labelled_equivalent([32], [0.5], 0.5)
    with pytest.raises(ValueError):
        labelled_equivalent([32, 32], [0.5, 0.6], 0.55)
