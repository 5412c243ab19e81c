"""How often does the verdict's interval cover the true method effect? t on split means against the two-level
bootstrap, and the power formula against simulated t tests (issue 39).

Simulated sweeps under the random-intercept model of ``segsynth.evaluate.split_evidence``: k splits, each with
n test cases; split s shifts every case difference by u_s ~ N(0, tau^2), cases add e ~ N(0, sigma^2). The split
spread and the case noise default to Kvasir 32 + 8 (the three synthetic recipes against augment over splits 0-5:
tau 2.8-4.0 Dice points, case sd 20.4-21.6 points, 200 test polyps per split; split-mean sd 3.2-4.3). For each k the script counts how often
each 95 % interval covers the true mean effect (0 here: coverage does not depend on it), and how often the
t test on k splits detects a true effect of 2 points against the power ``power_of_splits`` predicts.

    python benchmarks/verdict_coverage.py            # writes results/verdict_coverage.json + .png, ~1 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

from segsynth.evaluate.split_evidence import power_of_splits, splits_needed, two_level_bootstrap  # noqa: E402


def simulate(k: int, n: int, tau: float, sigma: float, mu: float, reps: int, n_boot: int, rng) -> dict:
    cover_t = cover_b = reject = 0
    for r in range(reps):
        u = rng.normal(0.0, tau, k)
        diffs = [mu + u[s] + rng.normal(0.0, sigma, n) for s in range(k)]
        d = np.array([x.mean() for x in diffs])
        m, se = d.mean(), d.std(ddof=1) / np.sqrt(k)
        half = sps.t.ppf(0.975, k - 1) * se
        cover_t += (m - half <= mu <= m + half)
        reject += not (m - half <= 0 <= m + half)
        if n_boot:
            lo, hi = two_level_bootstrap(diffs, n_boot=n_boot, seed=r)
            cover_b += lo <= mu <= hi
    return {"k": k, "coverage_t": cover_t / reps, "coverage_bootstrap": cover_b / reps if n_boot else None,
            "rejection_rate": reject / reps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="2,3,4,6,8,12")
    p.add_argument("--n-cases", type=int, default=200)
    p.add_argument("--tau", type=float, default=3.6, help="split spread of the true differences, Dice points")
    p.add_argument("--sigma", type=float, default=21.0, help="case spread of the differences, Dice points")
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--boot", type=int, default=500)
    p.add_argument("--effect", type=float, default=2.0, help="effect of the power check, Dice points")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    ks = [int(x) for x in a.splits.split(",")]
    sd_split = float(np.sqrt(a.tau ** 2 + a.sigma ** 2 / a.n_cases))  # spread of the split means
    coverage = [simulate(k, a.n_cases, a.tau, a.sigma, 0.0, a.reps, a.boot, rng) for k in ks]
    need = splits_needed(sd_split / 100, a.effect / 100)
    power_ks = sorted({2, 4, 8, 12, 16, 24, 32, need - 1, need, need + 1} - {0, 1})
    power = []
    for k in power_ks:
        sim = simulate(k, a.n_cases, a.tau, a.sigma, a.effect, a.reps, 0, rng)
        power.append({"k": k, "formula": power_of_splits(k, sd_split / 100, a.effect / 100),
                      "simulated": sim["rejection_rate"]})
    sim_need = next((r["k"] for r in power if r["simulated"] >= 0.8), None)
    out = {"flags": vars(a), "split_sd_points": sd_split, "coverage": coverage, "power": power,
           "splits_needed_formula": need, "splits_needed_simulated": sim_need,
           "seconds": time.perf_counter() - t0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "verdict_coverage.json").write_text(json.dumps(out, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ks, [c["coverage_t"] for c in coverage], "o-", label="t on split means (used)")
    ax1.plot(ks, [c["coverage_bootstrap"] for c in coverage], "s--", label="two-level bootstrap")
    ax1.axhline(0.95, color="grey", lw=0.8)
    ax1.set(xlabel="splits", ylabel="coverage of the true effect", title="95 % intervals", ylim=(0.5, 1.0))
    ax1.legend()
    ax2.plot([r["k"] for r in power], [r["formula"] for r in power], "o-", label="noncentral t formula")
    ax2.plot([r["k"] for r in power], [r["simulated"] for r in power], "s--", label="simulated t tests")
    ax2.axhline(0.8, color="grey", lw=0.8)
    ax2.set(xlabel="splits", ylabel=f"power to detect ±{a.effect:g} Dice",
            title=f"split sd {sd_split:.1f} points: ±{a.effect:g} needs {need} splits")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "verdict_coverage.png", dpi=110)
    for c in coverage:
        print(f"k={c['k']:2d}: coverage t {c['coverage_t']:.3f}, bootstrap {c['coverage_bootstrap']:.3f}")
    for r in power:
        print(f"k={r['k']:3d}: power formula {r['formula']:.3f}, simulated {r['simulated']:.3f}")
    print(f"splits needed for ±{a.effect:g}: formula {need}, simulation {sim_need}; {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
