"""The computed verdict: the split (labelled cases + seed) is the unit; helped / hurt when the 95 % interval of
the mean per-split difference lies above / below 0, inconclusive otherwise; one split says so."""

from __future__ import annotations

import numpy as np

from segsynth.evaluate.split_evidence import ONE_SPLIT
from segsynth.experiments.verdict import verdict_sentences, verdicts, worth


def _records(method_shift: dict[str, float], n_cases: int = 20, seeds=(0, 1, 2), n_train: int = 4,
             noise: float = 0.001, volumes: bool = False, split_shift: dict[int, dict[str, float]] | None = None):
    """Sweep records: each case's Dice = a base + the method's shift (+ that split's extra shift) + noise."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, n_cases)
    out = []
    for seed in seeds:
        for method, shift in method_shift.items():
            extra = (split_shift or {}).get(seed, {}).get(method, 0.0)
            per_case = []
            for i in range(n_cases):
                d = float(base[i] + shift + extra + noise * rng.standard_normal())
                row = {"case_id": f"case{i}", "dice_mean": d}
                if volumes:
                    row["volume_id"] = f"vol{i // 2}"
                per_case.append(row)
            out.append({"dataset": "blobs", "test_set": "in-domain", "segmenter": "unet", "method": method,
                        "n_train": n_train, "seed": seed, "status": "ok", "per_case": per_case,
                        "dice_mean": float(np.mean([c["dice_mean"] for c in per_case]))})
    return out


def _one(recs, method="genseg", baseline="augment"):
    (v,) = [x for x in verdicts(recs) if x["method_a"] == method and x["method_b"] == baseline]
    return v


def test_two_splits_at_plus_6_and_minus_4_are_inconclusive():
    """The issue's case: +6 on one split, −4 on the next, 100 cases each: a case-level test calls each split
    significant, the method-level verdict is inconclusive and names both differences."""
    recs = _records({"augment": 0.0, "genseg": 0.0}, n_cases=100, seeds=(0, 1),
                    split_shift={0: {"genseg": 0.06}, 1: {"genseg": -0.04}})
    v = _one(recs)
    assert v["word"] == "inconclusive" and not v["helped"] and not v["worse"]
    assert "genseg vs augment: inconclusive: +1.0 Dice [95 % CI " in v["sentence"]
    assert "over 2 splits (+6.0, −4.0)" in v["sentence"] and "P(worse on a new split)" in v["sentence"]
    assert "Case level (these 2 pairs of trained models): Wilcoxon" in v["sentence"]


def test_six_splits_at_plus_or_minus_2_5_help_or_hurt():
    jitter = [0.5, -0.5, 0.3, -0.3, 0.0, 0.2]
    for sign, word in ((1, "helped"), (-1, "hurt")):
        recs = _records({"augment": 0.0, "genseg": 0.0}, n_cases=100, seeds=range(6),
                        split_shift={s: {"genseg": sign * (0.025 + j / 100)} for s, j in enumerate(jitter)})
        v = _one(recs)
        assert v["word"] == word and v["helped"] == (sign > 0) and v["worse"] == (sign < 0)
        assert f"genseg vs augment: {word}: {'+' if sign > 0 else '−'}2.5 Dice" in v["sentence"]
        assert "over 6 splits" in v["sentence"] and "these 6 splits can detect effects of ±" in v["sentence"]
        assert v["split"]["k"] == 6 and len(v["split"]["split_diffs"]) == 6


def test_one_split_gets_the_one_split_sentence_and_the_case_level_test_for_two_models():
    recs = _records({"augment": 0.0, "genseg": 0.05}, seeds=(0,))
    v = _one(recs)
    assert v["word"] == "one split"
    assert f"genseg vs augment: {ONE_SPLIT} (+5.0 Dice on split 0)." in v["sentence"]
    assert "Case level (these two trained models): +5.0 Dice, Wilcoxon p < 0.001 over 20 cases" in v["sentence"]
    tiny = _records({"augment": 0.0, "genseg": 0.05}, n_cases=1, seeds=(0,), noise=0.0)
    (t,) = verdict_sentences(tiny)
    assert "Wilcoxon p n/a: fewer than 2 pairs" in t and "over 1 case" in t


def test_every_pair_and_baseline_order():
    recs = _records({"none": -0.05, "augment": 0.0, "genseg": 0.03, "brainspade": 0.0})
    s = verdict_sentences(recs)
    assert any(t.startswith("blobs (in-domain), N=4: genseg vs augment: helped: +3.0 Dice [95 % CI ") for t in s), s
    assert any("genseg vs none: helped: +8.0 Dice" in t for t in s)
    assert any("augment vs none: helped: +5.0 Dice" in t for t in s)
    assert not any("none vs" in t for t in s)  # said as augment vs none
    assert len(s) == 5  # augment-none, genseg x2, brainspade x2


def test_units_are_volumes_for_slices_and_baselines_are_configurable():
    recs = _records({"augment": 0.0, "genseg": 0.03}, volumes=True)
    (t,) = verdict_sentences(recs, baselines=("augment",))
    assert "over 10 volumes" in t
    assert verdict_sentences(recs, baselines=("none",)) == []
    assert verdict_sentences([]) == []


def test_worth_places_a_method_on_augments_curve_over_n_and_split_by_split():
    """augment at N=4 and 8 (Dice +0.1 from 4 to 8): a method halfway between at N=4 is worth ~5.7 (sqrt 32)
    labelled images, on every split; one below augment at its N and one above its largest N are said so; none is
    skipped and nothing is placed at the largest N or without a curve."""
    recs = (_records({"augment": 0.0, "none": -0.05, "genseg": 0.05, "spade": -0.02, "brainspade": 0.15}, n_train=4)
            + _records({"augment": 0.10, "genseg": 0.12}, n_train=8))
    ws = {(w["method"], w["n_train"]): w for w in worth(recs)}
    assert set(ws) == {("genseg", 4), ("spade", 4), ("brainspade", 4)}
    g = ws[("genseg", 4)]
    assert g["bound"] == "within" and abs(g["n"] - 32 ** 0.5) < 0.05 and g["seeds"] == [0, 1, 2]
    assert g["per_split"] == ["~6", "~6", "~6"] and g["sentence"].endswith("3 splits; per split ~6, ~6, ~6)")
    assert g["curve_n"] == [4, 8] and g["sentence"].startswith("blobs (in-domain), N=4: genseg is worth ~6 labelled "
                                                              "images with augment (mean Dice ")
    assert ws[("spade", 4)]["bound"] == "below" and ws[("spade", 4)]["per_split"] == ["<4"] * 3
    assert ws[("brainspade", 4)]["bound"] == "above" and ws[("brainspade", 4)]["per_split"] == [">8"] * 3
    s = verdict_sentences(recs)
    assert sum("is worth" in t for t in s) == 3 and s.index(g["sentence"]) > max(
        i for i, t in enumerate(s) if " vs " in t)  # after the verdicts
    assert worth(_records({"augment": 0.0, "genseg": 0.03})) == []  # one N: no curve
    assert verdict_sentences(recs, baselines=()) == []
    one = worth(_records({"augment": 0.0, "genseg": 0.05}, seeds=(0,), n_train=4)
                + _records({"augment": 0.1}, seeds=(0,), n_train=8))
    assert one[0]["sentence"].endswith(f"1 split; {ONE_SPLIT})")
