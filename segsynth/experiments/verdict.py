"""The verdict a person can act on: did a method help over ``augment`` (and over ``none``)? Computed, never written.

One sentence per (dataset, test set, segmenter) × N × method × baseline, from the sweep records and the paired
test of ``segsynth.evaluate.stats.compare_methods`` (test cases, or volumes for 2D slices, each averaged over
the seeds; two-sided Wilcoxon signed-rank on the mean foreground Dice):

    "jsrt_lungs (in-domain), N=9: genseg helped: +2.4 Dice over augment (Wilcoxon p = 0.003, 3 seeds × 60 cases)"

A method *helped* when its mean paired difference is > 0 and Wilcoxon p < 0.05; anything else "did not help"
(with "significantly worse" added when the difference is < 0 and p < 0.05). Dice differences are in points
(Dice × 100).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from segsynth.evaluate.stats import compare_methods, group_key, ok_records

ALPHA = 0.05


def _p(p: float | None) -> str:
    from segsynth.experiments.report import _fmt_p

    s = _fmt_p(p)
    return f"p {s[0]} {s[1:]}" if s.startswith("<") else ("p n/a" if s == "n/a" else f"p = {s}")


def _points(diff: float) -> str:
    return f"{100 * diff:+.1f}".replace("-", "−")


def _unit_word(records: Sequence[Mapping[str, Any]], n: int) -> str:
    vol = any(c.get("volume_id") is not None for r in records for c in r.get("per_case") or [])
    return ("volume" if vol else "case") + ("" if n == 1 else "s")


def verdict(records: Sequence[Mapping[str, Any]], method: str, baseline: str, n_train: int,
            group: tuple[str, str, str] | None = None) -> dict[str, Any]:
    """The paired comparison behind one sentence: ``compare_methods`` + ``helped`` + ``sentence``."""
    res = compare_methods(records, method, baseline, n_train, group=group)
    d, p = res["mean_diff"], res["wilcoxon_p"]
    sig = p is not None and math.isfinite(p) and p < ALPHA
    helped = math.isfinite(d) and d > 0 and sig
    worse = math.isfinite(d) and d < 0 and sig
    diff = _points(d) if math.isfinite(d) else "n/a"
    why = f": {res['reason']}" if not math.isfinite(p) and res.get("reason") else ""
    stats = (f"Wilcoxon {_p(p)}{why}, {res['n_seeds']} seed{'s' if res['n_seeds'] != 1 else ''} × "
             f"{res['n']} {_unit_word(records, res['n'])}")
    if helped:
        text = f"{method} helped: {diff} Dice over {baseline} ({stats})"
    else:
        text = f"{method} did not help over {baseline}: {diff} Dice ({stats})"
        if worse:
            text += ", significantly worse"
    return {**res, "helped": helped, "worse": worse, "sentence": text}


def verdicts(records: Iterable[Mapping[str, Any]], baselines: Sequence[str] = ("augment", "none")
             ) -> list[dict[str, Any]]:
    """Every verdict of a sweep: for each group and N (largest first), each method against each baseline
    present at that N (a baseline is compared only with the baselines listed after it)."""
    recs = ok_records(list(records))
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in recs:
        groups.setdefault(group_key(r), []).append(r)
    out = []
    for gk, grecs in groups.items():
        methods = list(dict.fromkeys(str(r.get("method")) for r in grecs))
        for n in sorted({int(r.get("n_train", -1)) for r in grecs}, reverse=True):
            present = {str(r.get("method")) for r in grecs if int(r.get("n_train", -1)) == n}
            for m in methods:
                if m not in present:
                    continue
                for b in baselines:
                    if b == m or b not in present:
                        continue
                    if m in baselines and list(baselines).index(m) > list(baselines).index(b):
                        continue  # "none vs augment" is said as "augment vs none"
                    v = verdict(grecs, m, b, n, group=gk)
                    where = gk[0] or "dataset"
                    if gk[1]:
                        where += f" ({gk[1]})"
                    if len({k[2] for k in groups}) > 1 and gk[2]:
                        where += f", {gk[2]}"
                    v["sentence"] = f"{where}, N={n}: {v['sentence']}"
                    v.update(dataset=gk[0], test_set=gk[1], segmenter=gk[2])
                    out.append(v)
    return out


def verdict_sentences(records: Iterable[Mapping[str, Any]], baselines: Sequence[str] = ("augment", "none")
                      ) -> list[str]:
    """The sentences of ``verdicts`` (see the module docstring for their form and the rule for "helped")."""
    return [v["sentence"] for v in verdicts(records, baselines)]


__all__ = ["ALPHA", "verdict", "verdict_sentences", "verdicts"]
