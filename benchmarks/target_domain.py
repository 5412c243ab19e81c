"""Out of domain with the deployment site's unlabelled images (issue 41): do the *_target methods beat augment there?

    python benchmarks/target_domain.py jsrt     # JSRT 7 + 2 labelled; Shenzhen: half unlabelled, half test
    python benchmarks/target_domain.py isic     # ISIC 32 + 8 labelled; PH2: half unlabelled, half test

Each split ``s`` (``--seeds``, default 6: s = 0..5) draws, from seed s,

* the labelled source cases (N train + validation, as benchmarks/genseg_benchmark.py draws them);
* a half of the second site (``segsynth split-folder SITE --fraction 0.5 --seed s``): part A, unlabelled
  (``--target-unlabelled``; only its images are read), and part B, the labelled test half (``--test-data``),
  disjoint by construction (and checked again by the sweep's leak check: id and decoded pixels).

Methods (``--methods``): ``augment`` (the baseline), ``domain_rand_aug`` (no target images: randomised appearance
stacked on augment), ``spade_target`` (SPADE pairs painted with the target images' style codes, the generator
fitted on them too), ``fixmatch_target`` (FixMatch on the target images), ``spade_target+fixmatch``.

Settings are fixed here, from earlier benchmarks, never chosen on the target test half (nor on anything of the
second site): 64², a U-Net of features 16-128, 800 segmenter steps, batch 8, lr 1e-3, model selection on the
labelled source validation pairs (validation every 100 steps); the SPADE recipe of benchmarks/synthesis_pays.py's
``spade_aug`` (half of each batch real, both streams classically augmented, 500 pairs, 1,000 GAN steps); FixMatch
at its defaults (threshold 0.95, CutMix 0.5, weight 1).

The verdict is the split-level one (``segsynth.experiments.verdict.verdicts``): each method against augment on the
target test half, helped / hurt when the 95 % interval of the mean per-split difference excludes 0, with the
per-split differences. Writes under benchmarks/results/ (``--tag`` appended to the names):

    target_domain_<task>/split<s>/   one sweep per split (results.jsonl, resumable; report.html)
    target_domain_<task>/report.html the splits merged (montages of split 0 first); not committed: it pictures
                                     research-licence images (.gitignore)
    target_domain_<task>.json        summary per method (Dice, HD95, seconds, peak memory), verdicts with per-split
                                     differences, the splits' folders and sizes, the settings
    target_domain_<task>_dice.png    Dice per method and test set, one dot per split
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, UNET_FEATURES, shared, write_summary  # noqa: E402
from genseg_benchmark import dice_plot  # noqa: E402

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, run_sweep  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402

TASKS = {
    # name: (labelled source folder, second site folder, n_train, n_val)
    "jsrt": ("jsrt_lungs", "shenzhen_lungs", 7, 2),
    "isic": ("isic2017_skin", "ph2_skin", 32, 8),
}
METHODS = ["augment", "domain_rand_aug", "spade_target", "fixmatch_target", "spade_target+fixmatch"]
#: benchmarks/synthesis_pays.py's spade_aug
SPADE_AUG = {"mode": "mixed", "augment_real": True, "real_weight": 0.5, "n_synthetic": 500, "spade_steps": 1000}


def method_options(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    spade = {**SPADE_AUG, "spade_steps": a.spade_steps, "n_synthetic": a.n_synthetic,
             **({"classifier_steps": a.classifier_steps} if a.classifier_steps is not None else {})}
    return {"spade_target": dict(spade), "spade_target+fixmatch": dict(spade)}


def site_halves(site: Path, seed: int, root: Path) -> tuple[Path, Path]:
    """Part A (unlabelled) and part B (test) of the second site for split ``seed`` (made once, then reused)."""
    from segsynth.data.split_folder import split_folder

    a, b = root / f"{site.name}_s{seed}" / "unlabelled", root / f"{site.name}_s{seed}" / "test"
    if not (a / "dataset.json").exists() or not (b / "dataset.json").exists():
        split_folder(site, a, b, fraction=0.5, seed=seed, overwrite=True)
    return a, b


def sweep_config(a: argparse.Namespace, seed: int, unlabelled: Path, test: Path, out: Path) -> SweepConfig:
    source, _, n_train, n_val = TASKS[a.task]
    train = TrainConfig(steps=a.steps, batch_size=8, lr=1e-3, val_every=max(1, a.steps // 8), progress=False)
    return SweepConfig(data=shared(source), out=out / f"split{seed}", methods=a.methods, n_values=[n_train],
                       seeds=[seed], test_data=test, target_unlabelled=unlabelled, n_val=n_val, n_test=a.n_test,
                       segmenter="unet", segmenter_kwargs={"features": UNET_FEATURES[2]},
                       spec=PreprocessSpec(size=a.size), train=train, method_options=method_options(a),
                       device=a.device, fidelity=a.fidelity, report=True,
                       title=f"{a.task}: {n_train} + {n_val} labelled -> {TASKS[a.task][1]} (split {seed})")


def target_verdicts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method against augment, per test set: the split-level verdict and its numbers (Dice points)."""
    from segsynth.experiments.verdict import verdicts

    out = []
    for v in verdicts(records, baselines=("augment",)):
        s = v["split"]
        out.append({"test_set": v["test_set"], "method": v["method_a"], "baseline": v["method_b"], "word": v["word"],
                    "mean_dice_points": 100 * s["mean"], "ci95_points": [100 * s["ci_low"], 100 * s["ci_high"]],
                    "per_split_points": [round(100 * d, 2) for d in s["split_diffs"]], "split_ids": s["split_ids"],
                    "p_worse": s["p_worse"], "sentence": v["sentence"]})
    return out


def run(a: argparse.Namespace) -> Path:
    name = f"target_domain_{a.task}{'_' + a.tag if a.tag else ''}"
    out = RESULTS / name
    site = shared(TASKS[a.task][1])
    split_root = RESULTS / f"_target_domain_splits{'_' + a.tag if a.tag else ''}"  # ignored (benchmarks/results/_*/)
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    records: list[dict[str, Any]] = []
    splits, seconds = [], {}
    for s in seeds:
        unl, test = site_halves(site, s, split_root)
        cfg = sweep_config(a, s, unl, test, out)
        t0 = time.perf_counter()
        records += run_sweep(cfg)
        seconds[s] = time.perf_counter() - t0
        n_unl = sum(1 for _ in json.loads((unl / "dataset.json").read_text())["pairs"])
        n_test = sum(1 for _ in json.loads((test / "dataset.json").read_text())["pairs"])
        splits.append({"seed": s, "unlabelled": str(unl), "test": str(test), "n_unlabelled": n_unl,
                       "n_test": n_test, "sweep": str(cfg.out), "sweep_seconds": seconds[s]})
    _merged_report(records, out, seeds[0], title=f"{name}: {len(seeds)} splits")
    verdicts = target_verdicts(records)
    config = {"task": a.task, "source": TASKS[a.task][0], "site": TASKS[a.task][1], "n_train": TASKS[a.task][2],
              "n_val": TASKS[a.task][3], "methods": a.methods, "seeds": seeds, "size": a.size, "steps": a.steps,
              "batch_size": 8, "lr": 1e-3, "segmenter_features": list(UNET_FEATURES[2]),
              "method_options": method_options(a), "fidelity": a.fidelity, "n_test_in_domain": a.n_test,
              "threads": a.threads,
              "splits": splits, "aim": "+3 Dice over augment on the target test half (split-level verdict)",
              "chosen_on": "nothing: settings fixed in advance (benchmarks/synthesis_pays.py, genseg_benchmark.py); "
                           "checkpoints chosen on the labelled source validation pairs"}
    path = write_summary(name, config, records, verdicts)
    methods = [m for m in a.methods if any(r.get("method") == m for r in records)]
    dice_plot(records, SimpleNamespace(methods=methods, title=f"{name}: test Dice per split"),
              RESULTS / f"{name}_dice.png")
    for v in verdicts:
        print(v["sentence"])
    print(f"\nsummary: {path}\nreport: {out / 'report.html'}")
    return path


def _merged_report(records: list[dict[str, Any]], out: Path, first_seed: int, title: str) -> None:
    from segsynth.experiments.report import write_report

    samples = out / f"split{first_seed}" / "samples"
    pictures = sorted(samples.glob("*.png"), key=lambda p: (not p.name.startswith("target_montage_"), p.name))
    write_report(records, out, title=title, baseline="augment", sample_images=[str(p) for p in pictures])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--methods", type=lambda s: [m.strip() for m in s.split(",") if m.strip()], default=METHODS)
    p.add_argument("--seeds", type=int, default=6, help="splits (seeds first-seed .. first-seed + seeds - 1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=800, help="segmenter steps per run")
    p.add_argument("--spade-steps", type=int, default=SPADE_AUG["spade_steps"], help="SPADE GAN steps")
    p.add_argument("--n-synthetic", type=int, default=SPADE_AUG["n_synthetic"], help="SPADE pairs per run")
    p.add_argument("--classifier-steps", type=int, default=None,
                   help="steps of SPADE's modality classifier (default: the generator's, 200)")
    p.add_argument("--n-test", type=int, default=None, help="in-domain test cases (default: all unused)")
    p.add_argument("--fidelity", action=argparse.BooleanOptionalAction, default=True,
                   help="label fidelity of the SPADE pairs (reuses each split's augment run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 when another benchmark runs beside this one)")
    p.add_argument("--tag", default="", help="suffix of the output names (smoke runs: a throwaway tag)")
    return p


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    a = build_parser().parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    run(a)


if __name__ == "__main__":
    main()
