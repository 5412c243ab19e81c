"""Learned transforms in bf16 (issue 12): is registration as good, and is it faster?

For each seed, one hippocampus volume is the atlas, ``--n-unlabelled`` others are the unlabelled images, and
``--n-test`` others are the test volumes (the same split in both precisions). The spatial (forward + backward
registration U-Nets) and appearance models are fitted under each ``--precisions`` setting (bf16: the networks'
forwards under autocast; integration, warps and losses in fp32). Quality is single-atlas segmentation (SAS: the
atlas registered to each test volume, its labels warped) Dice on the test volumes, the most direct measure of
the spatial model; paired Wilcoxon over test volumes (each averaged over the seeds) against the first
precision, plus a seed-level t-test. Cost: seconds per fit step of each model, peak memory.

    .venv/bin/python benchmarks/transforms_precision.py --seeds 0,1,2 --threads 2

Writes ``benchmarks/results/transforms_precision.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine, shared  # noqa: E402

log = logging.getLogger("transforms_precision")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="hippocampus", help="a 3D dataset of ../shared/data")
    p.add_argument("--shape", default="40,56,40", type=lambda s: tuple(int(v) for v in s.split(",")))
    p.add_argument("--precisions", default="fp32,bf16", type=lambda s: s.split(","))
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--n-unlabelled", type=int, default=40)
    p.add_argument("--n-test", type=int, default=30)
    p.add_argument("--reg-steps", type=int, default=400)
    p.add_argument("--app-steps", type=int, default=200)
    p.add_argument("--reg-batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "transforms_precision.json")
    return p.parse_args(argv)


def sas_dice(t: Any, test: list[Any], info: Any) -> list[dict[str, Any]]:
    from segsynth.evaluate.metrics import case_metrics
    from segsynth.generators.learned_transforms.sas import AtlasSegmenter
    from segsynth.segment.inference import predict

    seg = AtlasSegmenter(t).eval()
    out = []
    with torch.no_grad():
        for c in test:
            m = case_metrics(predict(seg, c.image, info.num_classes, device="cpu"), c.mask, info.labels)
            out.append({"case_id": c.case_id, "dice_mean": m["dice_mean"], "dice": m["dice"]})
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    from segsynth.data.case import Case
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.splits import split_cases
    from segsynth.evaluate.stats import compare_methods
    from segsynth.generators.learned_transforms import LearnedTransforms, TransformFitConfig
    from segsynth.utils.device import peak_memory_mb, reset_peak_memory
    from segsynth.utils.seed import derive_seed

    n_cases = 1 + a.n_unlabelled + a.n_test
    data = load_dataset(shared(a.data), PreprocessSpec(spatial_dims=3, size=None, shape_3d=a.shape),
                        progress=False, max_cases=n_cases)
    info = data.info
    runs = []
    for seed in a.seeds:
        split = split_cases(data.cases, n_train=1, n_val=0, seed=seed, n_test=a.n_test)
        atlas = split.train[0]
        pool = [Case(c.case_id, c.image, None, dict(c.meta)) for c in split.pool][: a.n_unlabelled]
        for prec in a.precisions:
            cfg = TransformFitConfig(steps=a.reg_steps, appearance_steps=a.app_steps, batch_size=a.reg_batch,
                                     lr=2e-3, precision=prec)
            t = LearnedTransforms.for_atlas(atlas, info.num_classes, reg_channels=(8, 16, 16, 16),
                                            reg_final_channels=(8, 8), appearance_channels=(8, 16, 32),
                                            seed=derive_seed(seed, "transforms-init"))
            reset_peak_memory(torch.device("cpu"))
            t0 = time.perf_counter()
            stats = t.fit([atlas], unlabelled=pool, seed=seed, config=cfg)
            seconds = time.perf_counter() - t0
            per_case = sas_dice(t, split.test, info)
            r = {"method": prec, "n_train": 1, "seed": seed, "status": "ok", "per_case": per_case,
                 "dice_mean": float(np.mean([p["dice_mean"] for p in per_case])),
                 "fit_seconds": seconds, "peak_memory_mb": peak_memory_mb(torch.device("cpu")),
                 "ms_per_spatial_step": 1000 * stats["spatial"]["seconds"] / max(1, a.reg_steps),
                 "ms_per_appearance_step": (1000 * stats["appearance"]["seconds"] / max(1, a.app_steps)
                                            if "appearance" in stats else None),
                 "spatial_loss_end": stats["spatial"]["loss_end"],
                 "appearance_loss_end": stats.get("appearance", {}).get("loss_end"),
                 "atlas": atlas.case_id, "n_unlabelled": len(pool), "n_test": len(split.test)}
            runs.append(r)
            log.info("seed %d %s: SAS Dice %.4f; %.0f ms / spatial step, %s ms / appearance step; fit %.0f s",
                     seed, prec, r["dice_mean"], r["ms_per_spatial_step"],
                     None if r["ms_per_appearance_step"] is None else round(r["ms_per_appearance_step"]), seconds)
    ref = a.precisions[0]
    comparisons = [compare_methods(runs, p, ref, 1) for p in a.precisions[1:]]
    summary = {}
    for p in a.precisions:
        rs = [r for r in runs if r["method"] == p]
        summary[p] = {k: float(np.mean([r[k] for r in rs])) for k in
                      ("dice_mean", "ms_per_spatial_step", "fit_seconds", "peak_memory_mb")}
        summary[p]["dice_per_seed"] = [r["dice_mean"] for r in rs]
        if all(r["ms_per_appearance_step"] is not None for r in rs):
            summary[p]["ms_per_appearance_step"] = float(np.mean([r["ms_per_appearance_step"] for r in rs]))
    return {"benchmark": "transforms_precision", "config": {k: v if not isinstance(v, Path) else str(v)
                                                           for k, v in vars(a).items()},
            "summary": summary, "comparisons": comparisons,
            "runs": [{k: v for k, v in r.items() if k != "per_case"} | {"per_case": [
                {"case_id": p["case_id"], "dice_mean": p["dice_mean"]} for p in r["per_case"]]} for r in runs]}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]
    names = list(s)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(names, [s[n]["ms_per_spatial_step"] for n in names], color="tab:blue", label="spatial")
    if all("ms_per_appearance_step" in s[n] for n in names):
        axes[0].bar(names, [s[n]["ms_per_appearance_step"] for n in names], color="tab:orange", alpha=0.7,
                    label="appearance")
    axes[0].set_ylabel("ms per fit step")
    axes[0].legend(fontsize=8)
    for i, n in enumerate(names):
        axes[1].scatter([i] * len(s[n]["dice_per_seed"]), s[n]["dice_per_seed"], color="k", s=12)
        axes[1].bar(i, s[n]["dice_mean"], alpha=0.4)
    axes[1].set_xticks(range(len(names)), names)
    axes[1].set_ylabel("SAS Dice on test volumes")
    fig.suptitle("learned transforms: fp32 vs bf16 (one dot per seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from segsynth.utils.files import write_json

    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    res = run(a)
    res["total_seconds"] = time.perf_counter() - t0
    res["machine"] = machine()
    write_json(a.out, res)
    plot(res, a.out.with_suffix(".png"))
    for c in res["comparisons"]:
        log.info("%s - %s: %+.4f Dice (Wilcoxon p %.3g, n %s)", c["method_a"], c["method_b"],
                 c.get("mean_diff", float("nan")), c.get("wilcoxon_p", float("nan")), c.get("n"))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
