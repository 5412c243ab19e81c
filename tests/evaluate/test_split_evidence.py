"""Method-level evidence: the split is the unit; interval words, P(worse), power against a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from segsynth.evaluate.split_evidence import (
    ONE_SPLIT,
    detectable_effect,
    effect_sentence,
    power_of_splits,
    power_sentence,
    split_effect,
    splits_needed,
    two_level_bootstrap,
)


def _splits(means, n_cases=100, case_sd=0.05, seed=0):
    """Per-split case differences whose means are exactly ``means`` (case noise centred per split)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s, m in enumerate(means):
        e = rng.normal(0.0, case_sd, n_cases)
        out[s] = m + e - e.mean()
    return out


def test_two_splits_that_disagree_are_inconclusive():
    res = split_effect(_splits([0.06, -0.04]))
    assert res["word"] == "inconclusive" and res["k"] == 2
    assert res["ci_low"] < 0 < res["ci_high"] and abs(res["mean"] - 0.01) < 1e-12
    text = effect_sentence(res)
    assert "+6.0, −4.0" in text and "over 2 splits" in text and "P(worse on a new split)" in text


@pytest.mark.parametrize("sign,word", [(1, "helped"), (-1, "hurt")])
def test_six_consistent_splits_help_or_hurt(sign, word):
    means = sign * (0.025 + 0.005 * np.array([-1, 1, -1, 1, 0.5, -0.5]))
    res = split_effect(_splits(means))
    assert res["word"] == word
    assert (res["ci_low"] > 0) if sign > 0 else (res["ci_high"] < 0)
    assert (res["p_worse"] < 0.01) if sign > 0 else (res["p_worse"] > 0.99)
    # the t interval by hand: mean ± t(0.975, 5) sd / sqrt(6)
    half = sps.t.ppf(0.975, 5) * np.std(means, ddof=1) / math.sqrt(6)
    assert res["ci_low"] == pytest.approx(np.mean(means) - half) and res["ci_high"] == pytest.approx(np.mean(means) + half)


def test_one_split_says_so_and_no_interval():
    res = split_effect(_splits([0.05]))
    assert res["word"] == "one split" and math.isnan(res["ci_low"]) and math.isnan(res["p_worse"])
    assert effect_sentence(res).startswith(ONE_SPLIT) and "+5.0 Dice on split 0" in effect_sentence(res)
    assert power_sentence(res) == ""
    assert split_effect({})["word"] == "no data"


def test_p_worse_is_the_predictive_t_probability():
    means = [0.03, 0.01, -0.01, 0.05]
    res = split_effect(_splits(means))
    m, sd, k = np.mean(means), np.std(means, ddof=1), 4
    assert res["p_worse"] == pytest.approx(sps.t.cdf(-m / (sd * math.sqrt(1 + 1 / k)), k - 1))


def test_equal_split_differences_give_a_point_interval():
    res = split_effect(_splits([0.02, 0.02, 0.02]))
    assert res["word"] == "helped" and res["ci_low"] == pytest.approx(0.02) and res["p_worse"] == 0.0


def test_power_formula_agrees_with_simulated_t_tests():
    """Power of the t test on k split differences (spread 3.2 points, effect 2): the formula's splits_needed is
    within one split of the first k whose simulated rejection rate reaches 80 %."""
    sd, effect = 0.032, 0.02
    need = splits_needed(sd, effect)
    assert need is not None and 15 <= need <= 30
    rng = np.random.default_rng(1)
    reps = 4000

    def simulated(k):
        d = rng.normal(effect, sd, size=(reps, k))
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(k))
        return float(np.mean(np.abs(t) > sps.t.ppf(0.975, k - 1)))

    sims = {k: simulated(k) for k in range(need - 3, need + 4)}
    for k, p in sims.items():
        assert abs(p - power_of_splits(k, sd, effect)) < 0.03, (k, p)
    sim_need = min(k for k, p in sims.items() if p >= 0.8)
    assert abs(sim_need - need) <= 1, (sim_need, need, sims)


def test_detectable_effect_inverts_power_and_power_sentence():
    k, sd = 6, 0.04
    d = detectable_effect(k, sd)
    assert power_of_splits(k, sd, d) == pytest.approx(0.8, abs=1e-6)
    res = split_effect(_splits([0.06, -0.02, 0.03, 0.0, 0.08, 0.01]))
    text = power_sentence(res)
    assert text.startswith("these 6 splits can detect effects of ±") and "detecting ±2 needs" in text
    assert math.isnan(power_of_splits(1, sd)) and splits_needed(0.0) == 2


def test_two_level_bootstrap_is_narrower_than_t_with_few_splits():
    """Kept beside the t interval: with 3 splits it knows only their 3 values (why the verdict uses t)."""
    data = list(_splits([0.05, 0.0, 0.02], n_cases=50).values())
    lo, hi = two_level_bootstrap(data, n_boot=1000, seed=0)
    res = split_effect(data)
    assert res["ci_low"] < lo < hi < res["ci_high"]
    assert min(d.mean() for d in data) - 0.02 <= lo and hi <= max(d.mean() for d in data) + 0.02
    assert all(math.isnan(x) for x in two_level_bootstrap(data[:1]))  # one split: no interval
