"""Statistics for low-data comparisons: mean ± sd over seeds, t-based 95% CIs, paired tests.

Sweep records are the JSON lines of ``results.jsonl`` (one per method × N × seed run, see
``segsynth.experiments.sweep``). Two methods are compared on the *same* test cases: the pairs are
(seed, test case) with the case's mean foreground Dice (or another per-case metric) under each method.

Those pairs are not independent (cases share a trained model, seeds share test cases), so the p-values
are best read as a descriptive measure of how consistently one method beats the other, not as an exact
error rate; the mean ± sd over seeds and its CI carry the between-run variation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

GroupKey = tuple[str, str, str]  # (dataset, test_set, segmenter)


def _finite(values: Iterable[float | None]) -> np.ndarray:
    out = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return np.asarray(out, dtype=np.float64)


def mean_sd(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; ``None``/NaN are left out.

    The sd is NaN with fewer than 2 values, the mean NaN with none.
    """
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def ci95(values: Iterable[float | None]) -> tuple[float, float]:
    """t-based 95% confidence interval of the mean of the finite values; (NaN, NaN) with fewer than 2."""
    x = _finite(values)
    if x.size < 2:
        return math.nan, math.nan
    m, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(x.size)
    half = float(sps.t.ppf(0.975, x.size - 1)) * se
    return m - half, m + half


def paired_tests(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """Paired comparison of two methods on the same items (``a[i]`` and ``b[i]`` belong together).

    Pairs where either value is missing (None/NaN) are dropped. Differences are ``a - b``.

    Returns:
        ``{"n", "n_dropped", "mean_a", "mean_b", "mean_diff", "ci95_low", "ci95_high", "wilcoxon_stat",
        "wilcoxon_p", "ttest_stat", "ttest_p", "reason"}``. Two-sided Wilcoxon signed-rank (SciPy, zero
        differences dropped, exact for small samples without ties, normal approximation otherwise) and
        paired t-test. A test that cannot be computed has p = NaN, and ``reason`` says why: fewer than 2
        pairs, all differences zero (the methods agree exactly), or zero variance of the differences
        (t undefined). ``reason`` is ``""`` when both tests ran.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    xa = np.asarray([p[0] for p in pairs], dtype=np.float64)
    xb = np.asarray([p[1] for p in pairs], dtype=np.float64)
    d = xa - xb
    n = int(d.size)
    out: dict[str, Any] = {
        "n": n,
        "n_dropped": len(a) - n,
        "mean_a": float(xa.mean()) if n else math.nan,
        "mean_b": float(xb.mean()) if n else math.nan,
        "mean_diff": float(d.mean()) if n else math.nan,
        "ci95_low": math.nan,
        "ci95_high": math.nan,
        "wilcoxon_stat": math.nan,
        "wilcoxon_p": math.nan,
        "ttest_stat": math.nan,
        "ttest_p": math.nan,
        "reason": "",
    }
    if n < 2:
        out["reason"] = f"fewer than 2 pairs (n={n})"
        return out
    sd = float(d.std(ddof=1))
    # Differences equal up to rounding (e.g. 0.93-0.90 vs 0.83-0.80) count as constant.
    scale = max(1.0, float(np.abs(d).max()))
    constant = sd <= 1e-12 * scale
    if constant:
        out["ci95_low"] = out["ci95_high"] = out["mean_diff"]
    else:
        out["ci95_low"], out["ci95_high"] = ci95(d)
    if np.all(np.abs(d) <= 1e-12 * scale):
        out["reason"] = "all differences are zero (identical results)"
        return out
    reasons = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        w = sps.wilcoxon(xa, xb, zero_method="wilcox", alternative="two-sided")
        out["wilcoxon_stat"], out["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
        if constant:
            reasons.append("differences have zero variance: t-test undefined")
        else:
            t = sps.ttest_rel(xa, xb)
            out["ttest_stat"], out["ttest_p"] = float(t.statistic), float(t.pvalue)
    out["reason"] = "; ".join(reasons)
    return out


def ok_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records of runs that finished (``status == "ok"``, the default when absent)."""
    return [r for r in records if r.get("status", "ok") == "ok"]


def group_key(record: Mapping[str, Any]) -> GroupKey:
    """The comparison group of a record: methods are compared only within one (dataset, test set, segmenter)."""
    return (str(record.get("dataset", "")), str(record.get("test_set", "")), str(record.get("segmenter", "")))


def _mean_of(records: Sequence[Mapping[str, Any]], key: str) -> float:
    m, _ = mean_sd(r.get(key) for r in records)
    return m


def summarise_runs(records: Iterable[Mapping[str, Any]], metric: str = "dice_mean") -> list[dict[str, Any]]:
    """One row per (dataset, test set, segmenter, method, N): the metric's mean ± sd over seeds and CI.

    Each run contributes its record-level ``metric`` (the mean over test cases). Failed runs are counted
    in ``n_failed`` and contribute nothing else.

    Returns:
        Rows ``{"dataset", "test_set", "segmenter", "method", "n_train", "n_runs", "n_failed", "seeds",
        "values", "mean", "sd", "ci95_low", "ci95_high", "train_seconds", "seconds", "peak_memory_mb"}``
        (the last three are means over the finished runs), sorted by group, N, and the order in which
        methods first appear in ``records``.
    """
    records = list(records)
    method_order: dict[str, int] = {}
    groups: dict[tuple[GroupKey, str, int], list[Mapping[str, Any]]] = {}
    for r in records:
        method = str(r.get("method", "?"))
        method_order.setdefault(method, len(method_order))
        key = (group_key(r), method, int(r.get("n_train", -1)))
        groups.setdefault(key, []).append(r)
    rows = []
    for (gk, method, n_train), runs in groups.items():
        done = sorted(ok_records(runs), key=lambda r: r.get("seed", 0))
        values = [r.get(metric) for r in done]
        mean, sd = mean_sd(values)
        lo, hi = ci95(values)
        rows.append(
            {
                "dataset": gk[0],
                "test_set": gk[1],
                "segmenter": gk[2],
                "method": method,
                "n_train": n_train,
                "n_runs": len(done),
                "n_failed": len(runs) - len(done),
                "seeds": [r.get("seed") for r in done],
                "values": [None if v is None else float(v) for v in values],
                "mean": mean,
                "sd": sd,
                "ci95_low": lo,
                "ci95_high": hi,
                "train_seconds": _mean_of(done, "train_seconds"),
                "seconds": _mean_of(done, "seconds"),
                "peak_memory_mb": _mean_of(done, "peak_memory_mb"),
            }
        )
    rows.sort(
        key=lambda r: (r["dataset"], r["test_set"], r["segmenter"], r["n_train"], method_order[r["method"]])
    )
    return rows


def paired_case_values(
    records: Iterable[Mapping[str, Any]],
    method_a: str,
    method_b: str,
    n_train: int,
    metric: str = "dice_mean",
    group: GroupKey | None = None,
) -> tuple[list[float | None], list[float | None], list[tuple[int, str]], list[str]]:
    """Per-(seed, test case) values of ``metric`` for two methods at one N, matched on both keys.

    Only (seed, case) pairs present in finished runs of both methods are kept; ``group`` restricts the
    records to one (dataset, test set, segmenter).

    Returns:
        ``(values_a, values_b, keys, units)`` aligned lists; ``keys`` are the (seed, case_id) pairs and
        ``units`` each pair's independent unit: the case's ``volume_id`` (2D slices of one 3D volume) or else
        its case id.
    """

    records = list(records)
    volume_of: dict[str, str] = {}

    def table(method: str) -> dict[tuple[int, str], float | None]:
        out: dict[tuple[int, str], float | None] = {}
        for r in ok_records(records):
            if r.get("method") != method or int(r.get("n_train", -1)) != n_train:
                continue
            if group is not None and group_key(r) != group:
                continue
            for c in r.get("per_case") or []:
                out[(int(r.get("seed", 0)), str(c["case_id"]))] = c.get(metric)
                if c.get("volume_id") is not None:
                    volume_of[str(c["case_id"])] = str(c["volume_id"])
        return out

    ta, tb = table(method_a), table(method_b)
    keys = sorted(set(ta) & set(tb))
    return [ta[k] for k in keys], [tb[k] for k in keys], keys, [volume_of.get(k[1], k[1]) for k in keys]


def compare_methods(
    records: Iterable[Mapping[str, Any]],
    method_a: str,
    method_b: str,
    n_train: int,
    metric: str = "dice_mean",
    group: GroupKey | None = None,
    unit: str = "case",
) -> dict[str, Any]:
    """``paired_tests`` of ``method_a`` vs ``method_b`` at one N.

    Runs of several seeds share their test cases, so (seed, case) pairs are not independent. With
    ``unit="case"`` (default) each test case's values are first averaged over the seeds in which both
    methods were evaluated on it (2D slices carrying a ``volume_id``: over the seeds and the slices of
    their volume), and the tests run over cases or volumes (``n`` = distinct units). With
    ``unit="seed_case"`` every (seed, case) pair counts as one item (more pairs, optimistic p-values).
    In both cases a seed-level paired t-test on the per-seed mean differences is added as
    ``seed_ttest_p`` (NaN with fewer than 2 seeds): the most conservative view, with little power at 3 seeds.

    Adds ``"method_a"``, ``"method_b"``, ``"n_train"``, ``"metric"``, ``"unit"``, ``"n_seeds"``,
    ``"n_seed_case_pairs"``, ``"seed_mean_diffs"``, ``"seed_ttest_p"`` and ``"split_unit_diffs"`` to the result:
    the last is, per seed (split), the differences ``a - b`` of each test unit (a case, or the mean over the slices
    of a volume), what ``segsynth.evaluate.split_evidence.split_effect`` takes.
    """
    if unit not in ("case", "seed_case"):
        raise ValueError(f"unit must be 'case' or 'seed_case', got {unit!r}")
    va, vb, keys, units = paired_case_values(records, method_a, method_b, n_train, metric, group)

    def ok(x: float | None) -> bool:
        return x is not None and math.isfinite(float(x))

    by_case: dict[str, list[tuple[float, float]]] = {}
    by_seed: dict[int, list[float]] = {}
    by_split_unit: dict[int, dict[str, list[float]]] = {}
    for x, y, (seed, _), unit_id in zip(va, vb, keys, units):
        if ok(x) and ok(y):
            by_case.setdefault(unit_id, []).append((float(x), float(y)))
            by_seed.setdefault(seed, []).append(float(x) - float(y))
            by_split_unit.setdefault(int(seed), {}).setdefault(unit_id, []).append(float(x) - float(y))
    if unit == "case":
        ids = sorted(by_case)
        res = paired_tests([float(np.mean([p[0] for p in by_case[i]])) for i in ids],
                           [float(np.mean([p[1] for p in by_case[i]])) for i in ids])
        res["n_dropped"] = len(set(units)) - len(ids)
    else:
        res = paired_tests(va, vb)
    seed_diffs = [float(np.mean(by_seed[s])) for s in sorted(by_seed)]
    seed_p = math.nan
    if len(seed_diffs) >= 2 and float(np.std(seed_diffs, ddof=1)) > 0:
        seed_p = float(sps.ttest_1samp(seed_diffs, 0.0).pvalue)
    res.update(
        method_a=method_a,
        method_b=method_b,
        n_train=n_train,
        metric=metric,
        unit=unit,
        n_seeds=len({k[0] for k in keys}),
        n_seed_case_pairs=sum(len(v) for v in by_case.values()),
        seed_mean_diffs=seed_diffs,
        seed_ttest_p=seed_p,
        split_unit_diffs={s: [float(np.mean(v)) for v in per_unit.values()]
                          for s, per_unit in sorted(by_split_unit.items())},
    )
    return res


def labelled_equivalent(n_values: Sequence[float], means: Sequence[float], value: float) -> dict[str, Any]:
    """How many labelled images a result is worth: the N at which a curve of mean Dice over N (one method at
    N = n_values, e.g. classical augmentation at 32, 64, 128 labels) reaches ``value`` (e.g. a synthetic recipe's
    mean Dice at the smallest N, on the same splits and test cases), interpolated linearly in log N between the
    two measured N that bracket it (learning curves are close to linear in log N over a doubling).

    Returns ``{"n": float | None, "bound": "within" | "below" | "above" | "not_monotone"}``: ``n`` is the
    interpolated N when ``value`` lies within the curve; "below" (``value`` under the curve's first point: worth
    fewer than ``n_values[0]``), "above" (over its last: worth more than the largest N measured) and a curve that
    falls somewhere ("not_monotone": more labels gave less, so no single N answers) give ``n`` None.
    """
    n = np.asarray(n_values, dtype=np.float64)
    d = np.asarray(means, dtype=np.float64)
    if n.size != d.size or n.size < 2:
        raise ValueError(f"need >= 2 points of equal length, got {n.size} N and {d.size} means")
    order = np.argsort(n)
    n, d = n[order], d[order]
    if np.any(np.diff(n) <= 0) or np.any(n <= 0):
        raise ValueError(f"N must be distinct and positive, got {n_values}")
    if np.any(np.diff(d) < 0):
        return {"n": None, "bound": "not_monotone"}
    if value < d[0]:
        return {"n": None, "bound": "below"}
    if value > d[-1]:
        return {"n": None, "bound": "above"}
    i = int(np.searchsorted(d, value, side="left"))
    if i == 0 or d[i] == value:
        return {"n": float(n[i]), "bound": "within"}
    t = (value - d[i - 1]) / (d[i] - d[i - 1])
    return {"n": float(np.exp(np.log(n[i - 1]) + t * (np.log(n[i]) - np.log(n[i - 1])))), "bound": "within"}
