"""The computed verdict: "helped" needs a positive mean difference and Wilcoxon p < 0.05."""

from __future__ import annotations

import numpy as np

from segsynth.experiments.verdict import verdict_sentences, verdicts, worth


def _records(method_shift: dict[str, float], n_cases: int = 20, seeds=(0, 1, 2), n_train: int = 4,
             noise: float = 0.001, volumes: bool = False):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, n_cases)
    out = []
    for seed in seeds:
        for method, shift in method_shift.items():
            per_case = []
            for i in range(n_cases):
                d = float(base[i] + shift + noise * rng.standard_normal())
                row = {"case_id": f"case{i}", "dice_mean": d}
                if volumes:
                    row["volume_id"] = f"vol{i // 2}"
                per_case.append(row)
            out.append({"dataset": "blobs", "test_set": "in-domain", "segmenter": "unet", "method": method,
                        "n_train": n_train, "seed": seed, "status": "ok", "per_case": per_case,
                        "dice_mean": float(np.mean([c["dice_mean"] for c in per_case]))})
    return out


def test_helped_and_did_not_help():
    recs = _records({"none": -0.05, "augment": 0.0, "genseg": 0.03, "brainspade": 0.0})
    s = verdict_sentences(recs)
    assert any(t.startswith("blobs (in-domain), N=4: genseg helped: +3.0 Dice over augment (Wilcoxon p < 0.001, "
                            "3 seeds × 20 cases)") for t in s), s
    assert any("genseg helped: +8.0 Dice over none" in t for t in s)
    bs = [t for t in s if "brainspade" in t and "over augment" in t]
    assert len(bs) == 1 and "brainspade did not help over augment: " in bs[0], bs
    assert " Dice (Wilcoxon p = " in bs[0] and "significantly" not in bs[0]
    assert any("augment helped: +5.0 Dice over none" in t for t in s)
    assert not any("none helped" in t or "none did not help" in t for t in s)  # said as augment vs none
    assert len(s) == 5  # augment-none, genseg x2, brainspade x2


def test_significantly_worse_and_untestable():
    recs = _records({"augment": 0.0, "spade": -0.04})
    v = [x for x in verdicts(recs) if x["method_a"] == "spade"][0]
    assert not v["helped"] and v["worse"] and v["sentence"].endswith("significantly worse")
    one = _records({"augment": 0.0, "genseg": 0.05}, n_cases=1, seeds=(0,), noise=0.0)
    (t,) = verdict_sentences(one)
    assert "genseg did not help over augment: +5.0 Dice (Wilcoxon p n/a: fewer than 2 pairs" in t
    assert "1 seed × 1 case)" in t


def test_units_are_volumes_for_slices_and_baselines_are_configurable():
    recs = _records({"augment": 0.0, "genseg": 0.03}, volumes=True)
    (t,) = verdict_sentences(recs, baselines=("augment",))
    assert "3 seeds × 10 volumes" in t
    assert verdict_sentences(recs, baselines=("none",)) == []
    assert verdict_sentences([]) == []


def test_worth_places_a_method_on_augments_curve_over_n():
    """augment at N=4 and 8 (Dice +0.1 from 4 to 8): a method halfway between at N=4 is worth ~5.7 (sqrt 32)
    labelled images; one below augment at its N and one above its largest N are said so; none is skipped and
    nothing is placed at the largest N or without a curve."""
    recs = (_records({"augment": 0.0, "none": -0.05, "genseg": 0.05, "spade": -0.02, "brainspade": 0.15}, n_train=4)
            + _records({"augment": 0.10, "genseg": 0.12}, n_train=8))
    ws = {(w["method"], w["n_train"]): w for w in worth(recs)}
    assert set(ws) == {("genseg", 4), ("spade", 4), ("brainspade", 4)}
    g = ws[("genseg", 4)]
    assert g["bound"] == "within" and abs(g["n"] - 32 ** 0.5) < 0.05 and g["seeds"] == [0, 1, 2]
    assert g["curve_n"] == [4, 8] and g["sentence"].startswith("blobs (in-domain), N=4: genseg is worth ~6 labelled "
                                                              "images with augment (mean Dice ")
    assert ws[("spade", 4)]["bound"] == "below" and "fewer than 4 labelled images" in ws[("spade", 4)]["sentence"]
    assert ws[("brainspade", 4)]["bound"] == "above" and "more than 8" in ws[("brainspade", 4)]["sentence"]
    s = verdict_sentences(recs)
    assert sum("is worth" in t for t in s) == 3 and s.index(g["sentence"]) > max(
        i for i, t in enumerate(s) if "help" in t)  # after the verdicts
    assert worth(_records({"augment": 0.0, "genseg": 0.03})) == []  # one N: no curve
    assert verdict_sentences(recs, baselines=()) == []
