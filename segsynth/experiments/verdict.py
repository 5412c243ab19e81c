"""The verdict a person can act on: did a method help over ``augment`` (and over ``none``)? Computed, never written.

One sentence per (dataset, test set, segmenter) × N × method × baseline, from the sweep records and the paired
test of ``segsynth.evaluate.stats.compare_methods`` (test cases, or volumes for 2D slices, each averaged over
the seeds; two-sided Wilcoxon signed-rank on the mean foreground Dice):

    "jsrt_lungs (in-domain), N=9: genseg helped: +2.4 Dice over augment (Wilcoxon p = 0.003, 3 seeds × 60 cases)"

A method *helped* when its mean paired difference is > 0 and Wilcoxon p < 0.05; anything else "did not help"
(with "significantly worse" added when the difference is < 0 and p < 0.05). Dice differences are in points
(Dice × 100).

When the sweep ran ``augment`` at several N, each other method at an N is also placed on augment's curve from
that N up (``segsynth.evaluate.stats.labelled_equivalent``, interpolated in log N, over the seeds both have):

    "jsrt_lungs (in-domain), N=8: genseg is worth ~13 labelled images with augment (mean Dice 0.912; augment
    0.901 at N=8, 0.925 at N=16; 3 seeds)"
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from segsynth.evaluate.stats import compare_methods, group_key, labelled_equivalent, ok_records

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
                    v["sentence"] = f"{_where(gk, len({k[2] for k in groups}) > 1)}, N={n}: {v['sentence']}"
                    v.update(dataset=gk[0], test_set=gk[1], segmenter=gk[2])
                    out.append(v)
    return out


def _where(gk: tuple[str, str, str], several_segmenters: bool) -> str:
    where = gk[0] or "dataset"
    if gk[1]:
        where += f" ({gk[1]})"
    if several_segmenters and gk[2]:
        where += f", {gk[2]}"
    return where


def worth(records: Iterable[Mapping[str, Any]], baseline: str = "augment",
          skip: Sequence[str] = ("none",)) -> list[dict[str, Any]]:
    """What each method is worth in labelled images of ``baseline``: for each group, each method (not the
    baseline, not those in ``skip``) at each N where the baseline also ran at a larger N, the N at which the
    baseline's mean Dice (over the seeds the method has at that N, from N up) reaches the method's; see
    ``labelled_equivalent``. Empty when the baseline ran at a single N."""
    recs = ok_records(list(records))
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in recs:
        groups.setdefault(group_key(r), []).append(r)
    several = len({k[2] for k in groups}) > 1
    out = []
    for gk, grecs in groups.items():
        dice: dict[tuple[str, int], dict[int, float]] = {}
        for r in grecs:
            if r.get("dice_mean") is not None and math.isfinite(float(r["dice_mean"])):
                dice.setdefault((str(r.get("method")), int(r.get("n_train", -1))), {})[int(r.get("seed", 0))] = \
                    float(r["dice_mean"])
        base_ns = sorted(n for m, n in dice if m == baseline)
        for (m, n), by_seed in sorted(dice.items()):
            if m == baseline or m in skip or n not in base_ns or n == base_ns[-1]:
                continue
            ns = [k for k in base_ns if k >= n]
            seeds = sorted(s for s in by_seed if all(s in dice[(baseline, k)] for k in ns))
            if not seeds:
                continue
            curve = [sum(dice[(baseline, k)][s] for s in seeds) / len(seeds) for k in ns]
            value = sum(by_seed[s] for s in seeds) / len(seeds)
            w = labelled_equivalent(ns, curve, value)
            points = ", ".join(f"{d:.3f} at N={k}" for k, d in zip(ns, curve))
            nseeds = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
            if w["bound"] == "within":
                what = f"is worth ~{w['n']:.0f} labelled images with {baseline}"
            elif w["bound"] == "below":
                what = f"is worth fewer than {n} labelled images with {baseline} (below it at N={n})"
            elif w["bound"] == "above":
                what = f"is worth more than {ns[-1]} labelled images with {baseline} (above it at every N measured)"
            else:
                what = f"cannot be placed on {baseline}'s curve (its Dice falls somewhere between N={ns[0]} and {ns[-1]})"
            out.append({**w, "method": m, "baseline": baseline, "n_train": n, "seeds": seeds, "dice_mean": value,
                        "curve_n": ns, "curve_dice": curve, "dataset": gk[0], "test_set": gk[1],
                        "segmenter": gk[2], "sentence": f"{_where(gk, several)}, N={n}: {m} {what} "
                                                        f"(mean Dice {value:.3f}; {baseline} {points}; {nseeds})"})
    return out


def verdict_sentences(records: Iterable[Mapping[str, Any]], baselines: Sequence[str] = ("augment", "none")
                      ) -> list[str]:
    """The sentences of ``verdicts`` (see the module docstring for their form and the rule for "helped"), then
    those of ``worth`` against the first baseline when it ran at several N."""
    records = list(records)
    places = worth(records, baselines[0], skip=baselines[1:]) if baselines else []
    return [v["sentence"] for v in verdicts(records, baselines)] + [w["sentence"] for w in places]


__all__ = ["ALPHA", "verdict", "verdict_sentences", "verdicts", "worth"]
