"""What more labelled images give, and what a synthetic recipe is worth in labelled images (issue 11).

`augment` (classical augmentation, trained as `synthesis_pays.py` trains it) at N, 2N, 4N, ... labelled images
of each split, all tested on the same test cases: a split takes its validation images first and its test images
last (`segsynth.data.splits`), so with a fixed --n-test the N training images are the first N of the 2N, and
validation and test do not move with N. Each N is compared with the base N (the smallest) by paired tests over
test cases. Recipes of `synthesis_pays.py` sweeps at the base N (`--recipes SWEEP/VARIANT`, folders under
`results/`) are compared with `augment` at every N on the same splits and test cases and placed on the curve:
"worth K labelled images" is the N at which `augment`'s mean Dice, interpolated in log N, reaches the recipe's.
That answers the question a user has before switching synthesis on: would labelling more images pay more?

Runs already made elsewhere are imported with `--import SWEEP/VARIANT` (its `augment` runs at an N of the curve)
after checking that their training and validation images are this split's; a run tested on more cases than
this curve's test set is cut down to it (its Dice recomputed over those cases). Recipes are checked the same way.

    python benchmarks/headroom.py kvasir --n-values 32,64,128 --n-test 200 --seeds 6 --steps 800 --threads 2 \\
        --import synthesis_pays_kvasir_s800/augment --recipes synthesis_pays_kvasir_s800spade/spade_aug_seg
    python benchmarks/headroom.py isic --n-values 32,64 --n-test 26 --seeds 6 --steps 800 --threads 2 \\
        --import synthesis_pays_isic_s800/augment --recipes synthesis_pays_isic_s800spade/spade_aug_seg
    python benchmarks/headroom.py jsrt --ood --n-values 7,14,28,125 --n-test 60 --seeds 3 --steps 800

Writes `results/headroom_<name>[_<tag>].json` and `.png`, and the sweep folder `results/headroom_<name>[_<tag>]/`
(`results.jsonl`, resumable; `report.html`).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, paired, write_summary  # noqa: E402
from genseg_benchmark import DATASETS, sweep_config  # noqa: E402
from synthesis_pays import build_parser as synthesis_pays_parser  # noqa: E402

#: the issue's bar: a recipe must beat augment at the same N by this much (Dice points / 100)
TARGET_GAIN = 0.02


def curve_dir(name: str, tag: str) -> Path:
    return RESULTS / f"headroom_{name}{'_' + tag if tag else ''}"


def split_ids(cfg: Any, data: Any, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """Per seed, as the sweep draws the split for the largest N and writes a record's provenance
    (``unit_ids``): the validation ids, the training ids at each N of the curve, and the in-domain test case ids."""
    from segsynth.data.splits import split_cases
    from segsynth.experiments.sweep import first_n, unit_ids

    out = {}
    for seed in seeds:
        s = split_cases(data.cases, n_train=max(cfg.n_values), n_val=cfg.n_val, seed=seed, n_test=cfg.n_test)
        out[seed] = {"val": unit_ids(s.val), "train": {n: unit_ids(first_n(s.train, n)) for n in cfg.n_values},
                     "test": {c.case_id for c in s.test}}
    return out


def matching_record(r: dict[str, Any], split: dict[str, Any], external: set[str] | None) -> dict[str, Any] | None:
    """``r`` restricted to this curve's test cases, or None if it was not trained on this split's first
    ``n_train`` training images and its validation images, or does not cover every test case of the curve.

    The Dice (and HD95) mean is recomputed over the kept cases; ``restricted_from`` keeps the original count.
    """
    if r.get("val_ids") != split["val"] or r.get("train_ids") != split["train"].get(int(r["n_train"])):
        return None
    want = split["test"] if r.get("test_set") == "in-domain" else external
    if want is None:
        return None
    tested = r.get("per_case") or []
    cases = [c for c in tested if c["case_id"] in want]
    if len(cases) != len(want):
        return None
    out = {**r, "per_case": cases, "n_test": len(cases), "dice_mean": float(np.mean([c["dice_mean"] for c in cases]))}
    hd = [c["hd95_mean"] for c in cases if c.get("hd95_mean") is not None and math.isfinite(c["hd95_mean"])]
    out["hd95_mean"] = float(np.mean(hd)) if hd else None
    if len(tested) != len(cases):
        out["restricted_from"] = len(tested)
    return out


#: training flags an imported run (or a recipe) must share with the curve's runs
SAME_TRAINING = ("steps", "lr", "batch_size", "size", "segmenter")


def check_training(spec: str, flags: dict[str, Any]) -> None:
    """Refuse ``spec`` (SWEEP/VARIANT) unless its sweep's summary JSON (``results/<SWEEP>.json``) shows the
    training flags of this curve: runs of another length or learning rate are not points of the same curve."""
    import json

    summary = RESULTS / f"{spec.rsplit('/', 1)[0]}.json"
    if not summary.exists():
        raise SystemExit(f"{summary}: no summary of the sweep {spec!r}, so its training flags cannot be checked")
    theirs = json.loads(summary.read_text()).get("config", {}).get("flags", {})
    differ = {k: (theirs.get(k), flags[k]) for k in SAME_TRAINING if theirs.get(k, flags[k]) != flags[k]}
    if differ:
        raise SystemExit(f"{spec}: trained with other flags than this curve ("
                         + ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items()) + ")")


def collect(folder: Path, variant: str, splits: dict[int, dict[str, Any]], external: set[str] | None,
            n_values: list[int], method: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The ok records of ``folder``/results.jsonl (method ``method`` or any) at an N of ``n_values`` and a
    seed of ``splits`` that match the split (``matching_record``); and a line for each record left out."""
    from segsynth.utils.files import read_jsonl

    path = folder / "results.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: no such results file (--import / --recipes name a sweep folder under {RESULTS}"
                         f" and a variant, e.g. synthesis_pays_kvasir_s800/augment)")
    kept, skipped = [], []
    for r in read_jsonl(path):
        if r.get("status") != "ok" or int(r.get("n_train", -1)) not in n_values or r.get("seed") not in splits:
            continue
        if method is not None and r.get("method") != method:
            continue
        m = matching_record(r, splits[r["seed"]], external)
        if m is None:
            skipped.append(f"{variant} N={r['n_train']} seed={r['seed']} {r.get('test_set')}: other split or test set")
        else:
            kept.append(m)
    return kept, skipped


def import_runs(out: Path, runs: list[dict[str, Any]]) -> int:
    """Append ``runs`` to the curve's results.jsonl where it has no finished run of that (N, seed, test set)."""
    from segsynth.utils.files import append_jsonl, read_jsonl

    path = out / "results.jsonl"
    done = {(r["n_train"], r["seed"], r["test_set"]) for r in read_jsonl(path) if r.get("status") == "ok"}
    added = 0
    for r in runs:
        key = (r["n_train"], r["seed"], r["test_set"])
        if key not in done:
            append_jsonl(path, {**r, "method": "augment", "imported": True})
            done.add(key)
            added += 1
    return added


def curve_comparisons(records: list[dict[str, Any]], recipes: dict[str, list[dict[str, Any]]],
                      n_values: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Paired tests (augment at each N against the base N; each recipe against augment at each N) and, per
    test set, the curve and what each recipe is worth in labels (``segsynth.experiments.verdict.worth``: augment's
    mean Dice over the seeds the recipe has)."""
    from segsynth.experiments.verdict import worth

    base = min(n_values)
    label = {n: f"augment@{n}" for n in n_values}
    ok = [r for r in records if r.get("status") == "ok"]
    named = [{**r, "method": v} for v, rs in recipes.items() for r in rs]
    flat = [{**r, "method": label[int(r["n_train"])], "n_train": base} for r in ok] + \
        [{**r, "n_train": base} for r in named]
    comparisons = []
    for n in n_values[1:]:
        comparisons += paired(flat, label[n], label[base])
    for v in recipes:
        for n in n_values:
            comparisons += paired(flat, v, label[n])
    placed = worth(ok + named, "augment", skip=())
    curves: dict[str, Any] = {}
    for ts in sorted({r["test_set"] for r in ok + named}):
        entry: dict[str, Any] = {"n_values": n_values, "augment": {}, "recipes": {}}
        for n in n_values:
            d = {r["seed"]: r["dice_mean"] for r in ok if r["test_set"] == ts and int(r["n_train"]) == n}
            v = [r.get("val_dice") for r in ok if r["test_set"] == ts and int(r["n_train"]) == n]
            entry["augment"][n] = {"seeds": sorted(d), "dice_per_seed": [d[s] for s in sorted(d)],
                                   "dice_mean": float(np.mean(list(d.values()))) if d else None,
                                   "val_dice_mean": float(np.mean([x for x in v if x is not None])) if d else None}
        for w in placed:
            if w["test_set"] == ts and w["n_train"] == base and w["curve_n"] == n_values:
                entry["recipes"][w["method"]] = {"seeds": w["seeds"], "dice_mean": w["dice_mean"],
                                                 "augment_curve_on_these_seeds": w["curve_dice"],
                                                 "worth": {"n": w["n"], "bound": w["bound"]}}
        curves[ts] = entry
    return comparisons, curves


def worth_text(w: dict[str, Any], n_values: list[int]) -> str:
    if w["bound"] == "within":
        return f"worth ~{w['n']:.0f} labelled images"
    return {"below": f"worth fewer than {min(n_values)} labelled images (below augment at {min(n_values)})",
            "above": f"worth more than {max(n_values)} labelled images (above augment at every N measured)",
            "not_monotone": "not placed: augment's curve falls somewhere"}[w["bound"]]


def curve_plot(curves: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 5.6), squeeze=False)
    for ax, (ts, c) in zip(axes[0], curves.items()):
        ns = c["n_values"]
        for n in ns:
            a = c["augment"][n]
            ax.scatter([n] * len(a["dice_per_seed"]), a["dice_per_seed"], s=12, color="C0", alpha=0.5)
        means = [c["augment"][n]["dice_mean"] for n in ns]
        ax.plot(ns, means, "o-", color="C0", label="augment (mean over splits)")
        ax.axhline(means[0] + TARGET_GAIN, color="grey", ls=":", lw=1,
                   label=f"augment at {ns[0]} + {100 * TARGET_GAIN:.0f} points (issue 11's bar)")
        drawn = {tuple(c["augment"][ns[0]]["seeds"])}
        for r in c["recipes"].values():  # a recipe run on fewer splits is placed on augment's curve over those
            if tuple(r["seeds"]) not in drawn:
                drawn.add(tuple(r["seeds"]))
                ax.plot(ns, r["augment_curve_on_these_seeds"], ".-", color="C0", lw=0.8, alpha=0.6,
                        label=f"augment on splits {', '.join(map(str, r['seeds']))}")
        for i, (rv, r) in enumerate(c["recipes"].items()):
            w = r["worth"]
            tag = f"~{w['n']:.0f}" if w["bound"] == "within" else w["bound"]
            ax.axhline(r["dice_mean"], color=f"C{i + 1}", ls="--", lw=1.2,
                       label=f"{rv} at {ns[0]} (worth {tag}; {len(r['seeds'])} splits)")
            if w["bound"] == "within":
                ax.plot([w["n"]], [r["dice_mean"]], "x", color=f"C{i + 1}", ms=8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("labelled training images (N)")
        ax.set_ylabel("test Dice (mean over cases)")
        ax.set_title(ts, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--n-values", required=True, type=lambda s: sorted({int(v) for v in s.split(",") if v}),
                   help="labelled training images per point of the curve, e.g. 32,64,128 (the smallest is the base)")
    p.add_argument("--n-val", type=int, default=None, help="validation images (default: the task's, as synthesis_pays)")
    p.add_argument("--n-test", type=int, required=True,
                   help="test images per split, fixed so that every N is tested on the same cases")
    p.add_argument("--seeds", type=int, default=3, help="splits 0 .. seeds-1")
    p.add_argument("--steps", type=int, default=800, help="segmenter steps per run (synthesis_pays.py's --steps)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--ood", action="store_true", help="jsrt: also test on the re-styled copy")
    p.add_argument("--import", dest="imports", default="", type=lambda s: [v for v in s.split(",") if v],
                   metavar="SWEEP/VARIANT,...", help="augment runs made by other sweeps (checked against the split)")
    p.add_argument("--recipes", default="", type=lambda s: [v for v in s.split(",") if v],
                   metavar="SWEEP/VARIANT,...", help="synthetic recipes at the base N to place on the curve")
    p.add_argument("--tag", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    return p


def main() -> None:
    from segsynth.experiments.sweep import load_for_sweep, print_summary, run_sweep

    a = build_parser().parse_args()
    if len(a.n_values) < 2:
        raise SystemExit("--n-values needs at least two N (the base and more)")
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # synthesis_pays.py's training set-up and defaults (its parser, as generator_grid.py takes them), augment only
    flags = [a.name, "--stage", "sweep", "--n-train", str(max(a.n_values)), "--n-test", str(a.n_test), "--seeds",
             str(a.seeds), "--steps", str(a.steps), "--lr", str(a.lr), "--device", a.device]
    for flag, value in (("--n-val", a.n_val), ("--batch-size", a.batch_size), ("--size", a.size)):
        if value is not None:
            flags += [flag, str(value)]
    ns = synthesis_pays_parser().parse_args(flags + (["--ood"] if a.ood else []))
    ns.methods = ["augment"]
    cfg = sweep_config(ns)
    cfg.n_values = list(a.n_values)
    cfg.out = curve_dir(a.name, a.tag)
    cfg.title = f"{a.name}: augment at N = {', '.join(map(str, a.n_values))} labelled images, one test set per split"
    data, external, _ = load_for_sweep(cfg)
    splits = split_ids(cfg, data, cfg.seeds)
    ext_ids = {c.case_id for c in external.cases} if external is not None else None
    notes: list[str] = []
    for spec in a.imports + a.recipes:
        check_training(spec, vars(a) | {"segmenter": "unet"})
    found = [(spec, *collect(RESULTS / spec, spec, splits, ext_ids, a.n_values, method="augment"))
             for spec in a.imports]  # every source read before any is written in: a wrong one changes nothing
    for spec, runs, skipped in found:
        notes += skipped
        logging.info("%s: %d matching augment runs imported, %d left out", spec, import_runs(cfg.out, runs),
                     len(skipped))
    records = run_sweep(cfg)
    print_summary(records, cfg.out)
    recipes: dict[str, list[dict[str, Any]]] = {}
    for spec in a.recipes:
        variant = spec.rsplit("/", 1)[1]
        runs, skipped = collect(RESULTS / spec, spec, splits, ext_ids, [min(a.n_values)])
        notes += skipped
        if runs:
            recipes[variant] = runs
        logging.info("%s: %d runs on this curve's splits, %d left out", spec, len(runs), len(skipped))
    comparisons, curves = curve_comparisons(records, recipes, a.n_values)
    for ts, c in curves.items():
        print(f"\n{ts}: augment " + ", ".join(f"N={n} {c['augment'][n]['dice_mean']:.3f}" for n in a.n_values))
        for rv, r in c["recipes"].items():
            print(f"  {rv} at N={min(a.n_values)}: {r['dice_mean']:.3f} over {len(r['seeds'])} splits, "
                  f"{worth_text(r['worth'], a.n_values)}")
    for c in comparisons:
        print(f"{c['test_set']:20s} {c['method_a']} - {c['method_b']}: {100 * c['mean_diff']:+.1f} points "
              f"[{100 * c['ci95_low']:+.1f}, {100 * c['ci95_high']:+.1f}] (Wilcoxon p={c['wilcoxon_p']:.2g}, "
              f"n={c['n']}; seed-level t p={c['seed_ttest_p']:.2g})")
    name = cfg.out.name
    config = {"flags": {k: v for k, v in vars(a).items()}, "n_values": a.n_values, "target_gain": TARGET_GAIN,
              "curves": curves, "left_out": notes}
    path = write_summary(name, config, records, comparisons)
    curve_plot(curves, RESULTS / f"{name}.png", cfg.title)
    print(f"summary: {path}\nplot: {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
