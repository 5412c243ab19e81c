"""Benchmark for issue 4: learned transforms (one-shot), domain randomisation and transfer (low-data sweep).

Parts (``--parts``, comma-separated):

* ``oneshot3d``: hippocampus 3D, one labelled atlas, up to ``n_unlabelled`` unlabelled training volumes,
  test on other volumes: SAS, SAS-aug, rand-aug, learned, learned + rand-aug, and all labels
  (classical augmentation on ``n_all`` labelled volumes); seeds; paired tests over test cases, each
  averaged over the seeds, plus a seed-level t-test.
* ``oneshot2d``: the same on a 2D dataset (default jsrt_lungs).
* ``lowdata``: ``none``, ``augment``, ``domain_rand`` and ``transfer`` (a segmenter pretrained on other
  datasets of ../shared/data, never the target) at N = 1, 2, 4, 8 on a 2D target.

Every part is a normal ``segsynth`` sweep (resumable: rerun the same command to continue) written under
``--out/<part>/``; this script adds the all-labels reference, the paired tests, the timings of each stage and
a summary ``summary.json`` + ``oneshot_<part>.png``.

Scales: ``--scale reduced`` fits 2 shared CPU cores in about 15 minutes; ``--scale medium`` is what the
closing notes report (about 70 minutes on 2 CPU cores); ``--scale full`` is the protocol
of the issue (3 seeds, 100 unlabelled volumes, long training; meant for a GPU). Any size can be overridden.

    .venv/bin/python benchmarks/learned_transforms_benchmark.py --scale reduced --out benchmarks/results/lt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.evaluate.stats import compare_methods, mean_sd  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, run_sweep  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402
from segsynth.utils.files import write_json  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ONESHOT_METHODS = ["sas", "sas_aug", "randaug", "learned", "learned_randaug"]

SCALES: dict[str, dict[str, Any]] = {
    "reduced": {
        "oneshot3d": {"seeds": [0], "n_unlabelled": 15, "n_test": 8, "n_val": 2, "n_all": 15, "reg_steps": 30,
                      "app_steps": 20, "reg_batch": 2, "steps": 40, "batch_size": 2, "lr": 2e-3,
                      "shape_3d": (32, 48, 32), "features": (8, 8, 16, 32, 64, 8),
                      "reg_channels": [8, 16, 16, 16], "reg_final_channels": [8, 8], "app_channels": [8, 16, 32]},
        "oneshot2d": {"seeds": [0, 1, 2], "n_unlabelled": 30, "n_test": 20, "n_val": 2, "n_all": 30,
                      "reg_steps": 80, "app_steps": 50, "reg_batch": 4, "steps": 80, "batch_size": 8,
                      "lr": 2e-3, "size": 64, "features": (8, 8, 16, 32, 64, 8),
                      "reg_channels": [8, 16, 16, 16], "reg_final_channels": [8, 8], "app_channels": [8, 16, 32]},
        "lowdata": {"seeds": [0], "n_values": [1, 4], "n_test": 20, "n_val": 2, "steps": 60, "batch_size": 8,
                    "lr": 2e-3, "size": 64, "features": (8, 8, 16, 32, 64, 8), "pretrain_steps": 80,
                    "pretrain_max_cases": 30},
    },
    # What the closing notes report (2 CPU cores: oneshot3d 36 min, oneshot2d ≈ 15 min, lowdata ≈ 20 min).
    "medium": {
        "oneshot3d": {"seeds": [0, 1, 2], "n_unlabelled": 100, "n_test": 30, "n_val": 2, "n_all": 100,
                      "reg_steps": 400, "app_steps": 200, "reg_batch": 2, "steps": 400, "batch_size": 2, "lr": 2e-3,
                      "shape_3d": (40, 56, 40), "features": (8, 8, 16, 32, 64, 8),
                      "reg_channels": [8, 16, 16, 16], "reg_final_channels": [8, 8], "app_channels": [8, 16, 32]},
        "oneshot2d": {"seeds": [0, 1, 2], "n_unlabelled": 60, "n_test": 40, "n_val": 2, "n_all": 60,
                      "reg_steps": 300, "app_steps": 200, "reg_batch": 4, "steps": 300, "batch_size": 8,
                      "lr": 2e-3, "size": 64, "features": (8, 8, 16, 32, 64, 8),
                      "reg_channels": [8, 16, 16, 16], "reg_final_channels": [8, 8], "app_channels": [8, 16, 32]},
        "lowdata": {"seeds": [0, 1, 2], "n_values": [1, 2, 4, 8], "n_test": 40, "n_val": 2, "steps": 200,
                    "batch_size": 8, "lr": 2e-3, "size": 64, "features": (8, 8, 16, 32, 64, 8),
                    "pretrain_steps": 300, "pretrain_max_cases": 30},
    },
    "full": {
        "oneshot3d": {"seeds": [0, 1, 2], "n_unlabelled": 100, "n_test": 40, "n_val": 3, "n_all": 100,
                      "reg_steps": 1500, "app_steps": 1000, "reg_batch": 4, "steps": 1500, "batch_size": 4,
                      "lr": 1e-3, "shape_3d": (48, 64, 48), "features": (32, 32, 64, 128, 256, 32)},
        "oneshot2d": {"seeds": [0, 1, 2], "n_unlabelled": 100, "n_test": 50, "n_val": 3, "n_all": 100,
                      "reg_steps": 2000, "app_steps": 1500, "reg_batch": 8, "steps": 1500, "batch_size": 16,
                      "lr": 1e-3, "size": 128, "features": (32, 32, 64, 128, 256, 32)},
        "lowdata": {"seeds": [0, 1, 2], "n_values": [1, 2, 4, 8], "n_test": 50, "n_val": 3, "steps": 1000,
                    "batch_size": 16, "lr": 1e-3, "size": 128, "features": (32, 32, 64, 128, 256, 32),
                    "pretrain_steps": 3000, "pretrain_max_cases": None},
    },
}

log = logging.getLogger("lt-benchmark")


def _train_cfg(p: dict[str, Any]) -> TrainConfig:
    return TrainConfig(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"], val_every=max(1, p["steps"] // 4),
                       progress=False)


def _transform_options(p: dict[str, Any]) -> dict[str, Any]:
    opts = {"reg_steps": p["reg_steps"], "app_steps": p["app_steps"], "reg_batch": p["reg_batch"],
            "max_unlabelled": p["n_unlabelled"]}
    for key in ("reg_channels", "reg_final_channels", "app_channels", "inverse", "smooth_weight",
                "app_smooth_weight", "similarity"):
        if key in p:
            opts[key] = p[key]
    return opts


def oneshot(part: str, data: Path, spec: PreprocessSpec, p: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """One atlas + unlabelled images: the five one-shot methods, then the all-labels reference."""
    opts = _transform_options(p)
    t0 = time.perf_counter()
    cfg = SweepConfig(data=data, out=out / "oneshot", methods=list(p.get("methods", ONESHOT_METHODS)), n_values=[1],
                      seeds=list(p["seeds"]), n_val=p["n_val"], n_test=p["n_test"], max_unlabelled=p["n_unlabelled"],
                      segmenter="unet", segmenter_kwargs={"features": tuple(p["features"])}, spec=spec,
                      train=_train_cfg(p), method_options={m: dict(opts) for m in ONESHOT_METHODS if m != "randaug"},
                      device=device, title=f"one-shot {part}: learned transforms vs baselines")
    records = run_sweep(cfg)
    oneshot_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = SweepConfig(data=data, out=out / "all_labels", methods=["augment"], n_values=[p["n_all"]],
                      seeds=list(p["seeds"]), n_val=p["n_val"], n_test=p["n_test"], segmenter="unet",
                      segmenter_kwargs={"features": tuple(p["features"])}, spec=spec, train=_train_cfg(p),
                      device=device, title=f"{part}: all labels", report=False)
    ref_records = run_sweep(ref)
    all_seconds = time.perf_counter() - t0
    merged = [r for r in records if r.get("status") == "ok"]
    merged += [{**r, "method": "all_labels", "n_train": 1, "n_all": r["n_train"]} for r in ref_records
               if r.get("status") == "ok"]
    failed = [f"{r['method']} seed {r['seed']}: {r.get('error')}" for r in records + ref_records
              if r.get("status") != "ok"]
    methods = list(cfg.methods) + ["all_labels"]
    summary: dict[str, Any] = {"data": str(data), "params": {k: v for k, v in p.items()}, "failed": failed,
                               "methods": {}, "paired": [], "timing": {}}
    for m in methods:
        rs = [r for r in merged if r["method"] == m]
        if not rs:
            continue
        ms = mean_sd(r["dice_mean"] for r in rs)
        per_label: dict[str, list[float]] = {}
        for r in rs:
            for c in r["per_case"]:
                for k, v in (c.get("dice") or {}).items():
                    if v is not None:
                        per_label.setdefault(k, []).append(float(v))
        summary["methods"][m] = {
            "dice_mean_over_seeds": ms[0], "dice_sd_over_seeds": ms[1], "runs": len(rs),
            "per_label": {k: float(np.mean(v)) for k, v in per_label.items()},
            "train_seconds": float(np.mean([r["train_seconds"] for r in rs])),
            "peak_memory_mb": float(np.max([r["peak_memory_mb"] for r in rs])),
        }
    pairs = [("learned_randaug", "randaug"), ("learned", "randaug"), ("learned", "sas_aug"),
             ("learned_randaug", "sas_aug"), ("sas_aug", "sas"), ("randaug", "sas"), ("all_labels", "learned_randaug")]
    for a, b in pairs:
        if a in summary["methods"] and b in summary["methods"]:
            res = compare_methods(merged, a, b, 1)
            summary["paired"].append({k: res[k] for k in ("method_a", "method_b", "n", "n_seeds", "mean_a", "mean_b",
                                                          "mean_diff", "ci95_low", "ci95_high", "wilcoxon_p",
                                                          "ttest_p")})
    fits = []
    for f in sorted((out / "oneshot" / "runs" / "_learned_transforms").glob("*/transforms.json")):
        st = json.loads(f.read_text()).get("fit_stats", {})
        fits.append({"atlas": st.get("atlas"), "n_unlabelled": st.get("n_unlabelled"),
                     "spatial_seconds": st.get("spatial", {}).get("seconds"),
                     "spatial_loss": [st.get("spatial", {}).get("loss_start"), st.get("spatial", {}).get("loss_end")],
                     "appearance_seconds": st.get("appearance", {}).get("seconds"),
                     "appearance_loss": [st.get("appearance", {}).get("loss_start"),
                                         st.get("appearance", {}).get("loss_end")],
                     "encode_seconds": st.get("encode_seconds")})
    summary["timing"] = {"transform_fits": fits, "oneshot_sweep_seconds": oneshot_seconds,
                         "all_labels_seconds": all_seconds}
    summary["figure"] = f"oneshot_{part}.png"
    return summary


def _plot_oneshot(summary: dict[str, Any], path: Path, part: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["methods"])
    means = [summary["methods"][m]["dice_mean_over_seeds"] for m in names]
    sds = [np.nan_to_num(summary["methods"][m]["dice_sd_over_seeds"]) for m in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, means, yerr=sds, capsize=4, color=["#999"] * 3 + ["#3a7"] * 2 + ["#357"])
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"one-shot {part.replace('oneshot', '').upper()} ({len(summary['params']['seeds'])} seed(s))")
    for i, m in enumerate(means):
        ax.text(i, m + 0.02, f"{m:.3f}", ha="center", fontsize=8)
    plt.xticks(rotation=20)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lowdata(target: Path, sources: list[Path], p: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """Pretrain on other datasets (2D, grey), then none / augment / domain_rand / transfer at several N."""
    from segsynth.generators.transfer import load_pretraining_data, pretrain

    spec = PreprocessSpec(spatial_dims=2, size=p["size"])
    model_dir = out / "pretrain" / "model"
    t0 = time.perf_counter()
    if not (model_dir / "model.safetensors").exists():
        src = load_pretraining_data(sources, spec, max_cases=p["pretrain_max_cases"], progress=False)
        pcfg = replace(_train_cfg(p), steps=p["pretrain_steps"], val_every=max(1, p["pretrain_steps"] // 3))
        pretrain(src, out / "pretrain", spatial_dims=2, in_channels=1, shape=(p["size"], p["size"]),
                 segmenter_kwargs={"features": tuple(p["features"])}, train_config=pcfg, device=device, seed=0)
    pre_seconds = time.perf_counter() - t0
    pre_info = json.loads((out / "pretrain" / "pretrain.json").read_text())
    t0 = time.perf_counter()
    cfg = SweepConfig(data=target, out=out / "sweep", methods=["none", "augment", "domain_rand", "transfer"],
                      n_values=list(p["n_values"]), seeds=list(p["seeds"]), n_val=p["n_val"], n_test=p["n_test"],
                      segmenter="unet", segmenter_kwargs={"features": tuple(p["features"])}, spec=spec,
                      train=_train_cfg(p), method_options={"transfer": {"init": str(model_dir)}}, device=device,
                      title="low-data: domain randomisation and transfer vs none / augment")
    records = run_sweep(cfg)
    ok = [r for r in records if r.get("status") == "ok"]
    table: dict[str, dict[str, Any]] = {}
    for r in ok:
        table.setdefault(r["method"], {}).setdefault(str(r["n_train"]), []).append(r["dice_mean"])
    paired = []
    for n in p["n_values"]:
        for a, b in (("domain_rand", "augment"), ("transfer", "augment"), ("domain_rand", "none"),
                     ("transfer", "none")):
            res = compare_methods(ok, a, b, n)
            paired.append({k: res[k] for k in ("method_a", "method_b", "n_train", "n", "mean_a", "mean_b",
                                               "mean_diff", "wilcoxon_p", "ttest_p")})
    return {"target": str(target), "pretrain_sources": [str(s) for s in sources], "params": p,
            "pretrain": {"seconds": pre_seconds, "labels": pre_info["labels"], "cases": pre_info["cases"],
                         "best_val_dice": pre_info["best_val_dice"]},
            "dice": {m: {n: {"mean": mean_sd(v)[0], "sd": mean_sd(v)[1], "runs": len(v)} for n, v in d.items()}
                     for m, d in table.items()},
            "train_seconds": {m: float(np.mean([r["train_seconds"] for r in ok if r["method"] == m]))
                              for m in table},
            "peak_memory_mb": float(max((r["peak_memory_mb"] for r in ok), default=0.0)),
            "paired": paired, "sweep_seconds": time.perf_counter() - t0,
            "failed": [f"{r['method']} N={r['n_train']}: {r.get('error')}" for r in records if r.get("status") != "ok"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learned_transforms",
                    help="summary.json and figures")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "_learned_transforms_work",
                    help="the sweeps (results.jsonl, reports, runs, fitted transforms, pretrained model)")
    ap.add_argument("--scale", choices=sorted(SCALES), default="reduced")
    ap.add_argument("--parts", default="oneshot2d,oneshot3d,lowdata")
    ap.add_argument("--data-3d", type=Path, default=SHARED / "hippocampus")
    ap.add_argument("--data-2d", type=Path, default=SHARED / "jsrt_lungs")
    ap.add_argument("--lowdata-target", type=Path, default=SHARED / "jsrt_lungs")
    ap.add_argument("--pretrain-data", default="kvasir_polyps,isic2017_skin,aomic_brain,hippocampus",
                    help="comma-separated folders under ../shared/data (or paths) to pretrain on; never the target")
    ap.add_argument("--set", action="append", default=[], metavar="PART.KEY=JSON",
                    help="override a size, e.g. oneshot2d.seeds=[0] or oneshot3d.reg_steps=200 (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    params = json.loads(json.dumps(SCALES[a.scale]))
    for item in a.set:
        key, value = item.split("=", 1)
        part, name = key.split(".", 1)
        params[part][name] = json.loads(value)
    a.out.mkdir(parents=True, exist_ok=True)
    summary_path = a.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"scale": a.scale, "threads": a.threads, "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None})
    for part in [x.strip() for x in a.parts.split(",") if x.strip()]:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        p = params[part]
        if part == "oneshot3d":
            spec = PreprocessSpec(spatial_dims=3, size=None, shape_3d=tuple(p["shape_3d"]))
            res = oneshot(part, a.data_3d, spec, p, a.work / part, a.device)
        elif part == "oneshot2d":
            spec = PreprocessSpec(spatial_dims=2, size=p["size"])
            res = oneshot(part, a.data_2d, spec, p, a.work / part, a.device)
        elif part == "lowdata":
            sources = [Path(s) if "/" in s else SHARED / s for s in a.pretrain_data.split(",") if s.strip()]
            sources = [s for s in sources if s.resolve() != a.lowdata_target.resolve()]
            res = lowdata(a.lowdata_target, sources, p, a.work / part, a.device)
            import shutil

            for png in ("dice_curve.png", "hd95_curve.png"):
                if (a.work / part / "sweep" / png).exists():
                    shutil.copy(a.work / part / "sweep" / png, a.out / f"lowdata_{png}")
        else:
            raise SystemExit(f"unknown part {part!r}")
        if "figure" in res:
            _plot_oneshot(res, a.out / res["figure"], part)
        res["wall_seconds"] = time.perf_counter() - t0
        res["cpu_seconds_main_process"] = time.process_time() - cpu0
        summary[part] = res
        write_json(summary_path, summary)
        log.info("%s done in %.0f s wall (%.0f s CPU)", part, res["wall_seconds"], res["cpu_seconds_main_process"])
    print(json.dumps({k: v for k, v in summary.items() if k not in ("oneshot2d", "oneshot3d", "lowdata")}, indent=1))
    for part in ("oneshot2d", "oneshot3d"):
        if part in summary:
            print(f"\n{part}:")
            for m, s in summary[part]["methods"].items():
                print(f"  {m:16s} Dice {s['dice_mean_over_seeds']:.3f} ± {s['dice_sd_over_seeds']:.3f} "
                      f"({s['runs']} runs, {s['train_seconds']:.0f} s/run)")
            for pr in summary[part]["paired"]:
                print(f"  {pr['method_a']} - {pr['method_b']}: {pr['mean_diff']:+.3f} (n={pr['n']}, "
                      f"Wilcoxon p={pr['wilcoxon_p']:.3g}, t-test p={pr['ttest_p']:.3g})")
    if "lowdata" in summary:
        print("\nlowdata:", json.dumps(summary["lowdata"]["dice"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
