"""Semi-supervised training on unlabelled scans (issue 16): `augment` vs `mean_teacher` vs `fixmatch`
(+ `mean_teacher_w1`: mean teacher with consistency weight 1 instead of the default 10), and the combination with
synthesis: `separate_aug+fixmatch` / `genseg_aug+fixmatch` (generated pairs stacked on augmentation in the labelled
stream, FixMatch on the unlabelled images), beside `separate_aug` / `genseg_aug` alone (--methods).

    python benchmarks/semi_supervised_benchmark.py jsrt --methods augment,fixmatch,separate_aug,separate_aug+fixmatch

    python benchmarks/semi_supervised_benchmark.py jsrt     # JSRT lungs, 7 train + 2 val labelled, 64 px
    python benchmarks/semi_supervised_benchmark.py kvasir   # Kvasir polyps, 40 train + 5 val labelled, 64 px
    python benchmarks/semi_supervised_benchmark.py hippo3d --max-unlabelled 100 --steps 240
        # hippocampus MRI volumes 40x56x40: 2 train + 2 val labelled, 100 unlabelled, 40 test

Same splits for every method of a seed (the sweep's); the labelled cases not used for training, validation or
test form the unlabelled pool (JSRT: 247 - 9 - 60 test = 178 images). 3 seeds, paired Wilcoxon over test cases
(seeds averaged per case); a combination is also compared with each of its parts. Writes
benchmarks/results/semi_supervised/<name>.json (Dice/HD95 mean ± sd, seconds and peak memory per run, paired
tests, a one-line verdict), <name>_dice.png and the sweep (results.jsonl, report.html) under
benchmarks/results/semi_supervised/<name>/. Sizes are set for 2 CPU cores (--steps to scale).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, UNET_FEATURES, paired, shared, summarise, write_summary  # noqa: E402
from genseg_benchmark import dice_plot  # noqa: E402

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, print_summary, run_sweep  # noqa: E402
from segsynth.generators import METHODS as REGISTRY  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402

SMALL_UNET = UNET_FEATURES[2]
METHODS = ["augment", "mean_teacher", "fixmatch", "mean_teacher_w1"]
# ablations: a registered method under another name with other options (the sweep keys options by name)
# GenSeg as in benchmarks/genseg_benchmark.py / synthesis_pays.py (64 px: width 16, 200 GAN steps first)
GENSEG_SMALL = {"features": 16, "max_features": 128, "disc_features": 32, "pretrain_steps": 200, "arch_every": 2,
                "gen_batch_size": 4, "arch_batch_size": 4, "derive_steps": 40}
VARIANTS = {
    "mean_teacher_w1": ("mean_teacher", {"weight": 1.0}),
    # the combination: the best synthetic recipe of issue 11 (GenSeg pairs stacked with augmentation)
    # in the labelled stream, FixMatch on the real unlabelled images
    "genseg_aug+fixmatch": ("fixmatch", {"labelled": "genseg_aug", **GENSEG_SMALL}),
    "separate_aug+fixmatch": ("fixmatch", {"labelled": "separate_aug", **GENSEG_SMALL}),
}
DATA = {  # name: (folder, labelled training cases, validation cases, test cases)
    "jsrt": ("jsrt_lungs", 7, 2, 60),
    "kvasir": ("kvasir_polyps", 40, 5, 100),
    "hippo3d": ("hippocampus", 2, 2, 40),  # volumes; the 2 labelled + 100 unlabelled (--max-unlabelled)
}
SHAPE_3D = (40, 56, 40)
SMALL_UNET_3D = UNET_FEATURES[3]


def sweep_config(a: argparse.Namespace) -> SweepConfig:
    folder, n, n_val, n_test = DATA[a.name]
    three_d = a.name == "hippo3d"
    train = TrainConfig(steps=a.steps, batch_size=2 if three_d else 8, lr=3e-3, val_every=max(1, a.steps // 10),
                        progress=False)
    spec = PreprocessSpec(spatial_dims=3, size=None, shape_3d=SHAPE_3D) if three_d else PreprocessSpec(size=a.size)
    options = {}
    for name, (base, opts) in VARIANTS.items():
        REGISTRY[name] = REGISTRY[base]
        options[name] = dict(opts)
    for name in ("genseg", "genseg_aug", "separate", "separate_aug"):  # the synthetic recipes alone, same GenSeg
        options[name] = dict(GENSEG_SMALL)
    return SweepConfig(data=shared(folder), out=a.out / a.name, methods=list(a.methods), method_options=options,
                       n_values=[n], seeds=list(range(a.seeds)), n_val=n_val, n_test=n_test,
                       max_unlabelled=a.max_unlabelled,
                       segmenter_kwargs={"features": SMALL_UNET_3D if three_d else SMALL_UNET},
                       spec=spec, train=train, device=a.device,
                       title=f"{folder}: {n} + {n_val} labelled + unlabelled pool")


def verdict(summary: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> str:
    """One sentence per semi-supervised method: its Dice against augment, and whether the difference holds."""
    dice = {s["method"]: s["dice_mean"] for s in summary if s["test_set"] == "in-domain"}
    secs = {s["method"]: s["seconds_per_run"] for s in summary if s["test_set"] == "in-domain"}
    parts = []
    for c in comparisons:
        if c.get("test_set") != "in-domain" or c.get("method_b") != "augment" or not c.get("n"):
            continue
        m = c["method_a"]
        p = c.get("wilcoxon_p")
        sig = p is not None and p == p and p < 0.05
        word = ("better than" if c["mean_diff"] > 0 else "worse than") if sig else "no different from"
        parts.append(f"{m} {dice.get(m, float('nan')):.3f} vs augment {dice.get('augment', float('nan')):.3f}: "
                     f"{word} augment (paired Wilcoxon p={p:.3g}, {secs.get(m, 0) / max(secs.get('augment', 1), 1e-9):.1f}x "
                     "the time)")
    return "; ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(DATA))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--methods", type=lambda s: s.split(","), default=METHODS)
    p.add_argument("--max-unlabelled", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS / "semi_supervised", help="where results go")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--summary-only", action="store_true", help="summarise the runs finished so far; train nothing")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = sweep_config(a)
    if a.summary_only:
        from segsynth.utils.files import read_jsonl

        records = [r for r in read_jsonl(cfg.out / "results.jsonl") if r["method"] in cfg.methods]
    else:
        records = run_sweep(cfg)
    print_summary(records, cfg.out)
    comparisons = [c for m in cfg.methods if m != "augment" for c in paired(records, m, "augment")]
    if {"fixmatch", "mean_teacher"} <= set(cfg.methods):
        comparisons += paired(records, "fixmatch", "mean_teacher")
    for m in cfg.methods:  # a combination against each of its parts: does one add to the other?
        if "+" in m:
            comparisons += [c for part in m.split("+") if part in cfg.methods for c in paired(records, m, part)]
    cfg_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    folder, n, n_val, n_test = DATA[a.name]
    images = shared(folder) / ("imagesTr" if (shared(folder) / "imagesTr").is_dir() else "images")
    n_pool = len(list(images.iterdir())) - n - n_val - n_test
    cfg_json["n_unlabelled"] = min(n_pool, a.max_unlabelled or n_pool)  # the split's pool, masks dropped
    where = (a.out / a.name).resolve()  # results/<...>.json; an --out elsewhere gets its summary beside the sweep
    name = str(where.relative_to(RESULTS.resolve())) if where.is_relative_to(RESULTS.resolve()) else str(where)
    path = write_summary(name, cfg_json, records, comparisons)
    text = verdict(summarise(records), comparisons)
    import json

    doc = json.loads(path.read_text())
    doc["verdict"] = text
    from segsynth.utils.files import write_json

    write_json(path, doc)
    dice_plot(records, cfg, a.out / f"{a.name}_dice.png")
    print(text)
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
