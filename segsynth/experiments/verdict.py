"""The verdict a person can act on: did a method help over ``augment`` (and over ``none``)? Computed, never written.

The unit is the split: the labelled cases and the seed of one sweep ``seed``. For each (dataset, test set,
segmenter) × N × method × baseline, each split gives the mean paired difference of the method and the baseline
over its test cases (volumes for 2D slices of 3D scans), and the verdict is about the mean of those per-split
differences (``segsynth.evaluate.split_evidence``: a random-intercept model, t interval on k - 1 degrees of
freedom; the module says why not the bootstrap):

* **helped**: the 95 % interval lies above 0; **hurt**: below 0; **inconclusive** otherwise;
* with one split the sentence says that a method effect cannot be told from split noise;
* every sentence names the per-split differences, the chance that the method is worse on a new split, and what
  these splits can detect (80 % power) and how many would detect ±2 Dice;
* the case-level Wilcoxon test stays, labelled for what it compares: these trained models, not the method.

    "kvasir_polyps (in-domain), N=32: separate_aug vs augment: inconclusive: +3.3 Dice [95 % CI −0.1, +6.7] over 6
    splits (+0.5, +7.8, +2.1, −0.4, +6.3, +3.5); P(worse on a new split) 19 %; these 6 splits can detect effects
    of ±4.6 Dice; detecting ±2 needs 23 splits. Case level (these 6 pairs of trained models): Wilcoxon p < 0.001
    over 1200 cases"

Dice differences are in points (Dice × 100).

When the sweep ran ``augment`` at several N, each other method at an N is also placed on augment's curve from
that N up (``segsynth.evaluate.stats.labelled_equivalent``, interpolated in log N), over the splits both have,
and split by split:

    "jsrt_lungs (in-domain), N=8: genseg is worth ~13 labelled images with augment (mean Dice 0.912; augment
    0.901 at N=8, 0.925 at N=16; 3 splits; per split ~9, ~16, fewer than 8)"
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from segsynth.evaluate.split_evidence import (
    ONE_SPLIT,
    effect_sentence,
    points,
    split_effect,
)
from segsynth.evaluate.stats import compare_methods, group_key, labelled_equivalent, ok_records
from segsynth.experiments.formatting import p_words

ALPHA = 0.05
#: the rule in one line, for the terminal summary and the report
VERDICT_RULE = ("the split is the unit; helped / hurt = the 95 % interval of the mean per-split difference lies "
                "above / below 0, inconclusive otherwise")
WORDS = ("helped", "hurt", "inconclusive", "one split", "no data")


def _unit_word(records: Sequence[Mapping[str, Any]], n: int) -> str:
    vol = any(c.get("volume_id") is not None for r in records for c in r.get("per_case") or [])
    return ("volume" if vol else "case") + ("" if n == 1 else "s")


def _case_level(res: Mapping[str, Any], k: int, unit: str) -> str:
    """The case-level test, labelled as what it compares: these trained models."""
    models = "these two trained models" if k <= 1 else f"these {k} pairs of trained models"
    why = f": {res['reason']}" if not math.isfinite(res["wilcoxon_p"]) and res.get("reason") else ""
    diff = points(res["mean_diff"]) if k <= 1 else ""
    return (f"Case level ({models}): {diff + ' Dice, ' if diff else ''}Wilcoxon {p_words(res['wilcoxon_p'])}{why} "
            f"over {res['n']} {unit}")


def verdict(records: Sequence[Mapping[str, Any]], method: str, baseline: str, n_train: int,
            group: tuple[str, str, str] | None = None) -> dict[str, Any]:
    """The comparison behind one sentence: the split-level effect (``split``, see
    ``segsynth.evaluate.split_evidence.split_effect``) decides ``word`` ("helped", "hurt", "inconclusive",
    "one split"); ``compare_methods``' case-level test is kept under its own keys. ``helped`` / ``worse`` are
    ``word == "helped"`` / ``"hurt"``."""
    res = compare_methods(records, method, baseline, n_train, group=group)
    split = split_effect(res["split_unit_diffs"])  # the same paired values, grouped by split
    word = split["word"]
    unit = _unit_word(records, res["n"])
    said = effect_sentence(split)  # with one split (or none) it already starts with what it is
    text = (f"{method} vs {baseline}: {said if split['k'] < 2 else f'{word}: {said}'}. "
            f"{_case_level(res, split['k'], unit)}")
    return {**res, "split": split, "word": word, "helped": word == "helped", "worse": word == "hurt",
            "sentence": text}


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
    ``labelled_equivalent``. Each split (seed) is also placed on its own curve (``per_split``: "~13", "<8",
    ">32", or "?" where that split's curve falls); one split gets the one-split sentence. Empty when the baseline
    ran at a single N."""
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
            per_split = [_placement(labelled_equivalent(ns, [dice[(baseline, k)][s] for k in ns], by_seed[s]), n, ns)
                         for s in seeds]
            points_ = ", ".join(f"{d:.3f} at N={k}" for k, d in zip(ns, curve))
            nsplits = f"{len(seeds)} split{'s' if len(seeds) != 1 else ''}"
            if w["bound"] == "within":
                what = f"is worth ~{w['n']:.0f} labelled images with {baseline}"
            elif w["bound"] == "below":
                what = f"is worth fewer than {n} labelled images with {baseline} (below it at N={n})"
            elif w["bound"] == "above":
                what = f"is worth more than {ns[-1]} labelled images with {baseline} (above it at every N measured)"
            else:
                what = f"cannot be placed on {baseline}'s curve (its Dice falls somewhere between N={ns[0]} and {ns[-1]})"
            splits_text = ONE_SPLIT if len(seeds) == 1 else f"per split {', '.join(per_split)}"
            out.append({**w, "method": m, "baseline": baseline, "n_train": n, "seeds": seeds, "dice_mean": value,
                        "curve_n": ns, "curve_dice": curve, "per_split": per_split, "dataset": gk[0],
                        "test_set": gk[1], "segmenter": gk[2],
                        "sentence": f"{_where(gk, several)}, N={n}: {m} {what} (mean Dice {value:.3f}; {baseline} "
                                    f"{points_}; {nsplits}; {splits_text})"})
    return out


def _placement(w: Mapping[str, Any], n: int, ns: Sequence[int]) -> str:
    """One split's place on the baseline's curve, in a few characters: "~13", "<8", ">32", "?"."""
    if w["bound"] == "within":
        return f"~{w['n']:.0f}"
    return {"below": f"<{n}", "above": f">{ns[-1]}"}.get(w["bound"], "?")


def verdict_sentences(records: Iterable[Mapping[str, Any]], baselines: Sequence[str] = ("augment", "none"),
                      computed: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
    """The sentences of ``verdicts`` (see the module docstring for their form and the verdict words), then
    those of ``worth`` against the first baseline when it ran at several N. ``computed``: the ``verdicts`` of
    these records and baselines when the caller has them already (they are not computed again)."""
    records = list(records)
    places = worth(records, baselines[0], skip=baselines[1:]) if baselines else []
    found = verdicts(records, baselines) if computed is None else computed
    return [v["sentence"] for v in found] + [w["sentence"] for w in places]


__all__ = ["ALPHA", "VERDICT_RULE", "WORDS", "verdict", "verdict_sentences", "verdicts", "worth"]
