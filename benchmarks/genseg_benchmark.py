"""GenSeg benchmark (issue 5): none vs augment vs separate vs genseg, several seeds, paired tests.

    python benchmarks/genseg_benchmark.py jsrt       # 9 JSRT labels (7 train + 2 val), test on unused JSRT
    python benchmarks/genseg_benchmark.py jsrt --ood # + out of domain: intensity-shifted unused JSRT images
    python benchmarks/genseg_benchmark.py isic       # 40 ISIC labels (32 train + 8 val), RGB
    python benchmarks/genseg_benchmark.py hippo3d    # 8 hippocampus volumes (6 train + 2 val), 3D

Everything CPU time depends on is a flag (--size, --steps, --pretrain-steps, --arch-every, --gen-features,
--n-test, --seeds, --methods), so the same script runs a smoke test here and the full study on a GPU.
Writes under benchmarks/results/:

    genseg_<name>/            the sweep (results.jsonl, resumable; report.html; learning-curve PNG)
    genseg_<name>.json        Dice/HD95 mean ± sd over seeds, seconds per run, peak memory, paired tests
                              genseg vs none / augment / separate (and separate vs none), measured
                              seconds per segmenter step per method, and the cost of a full run
    genseg_<name>_dice.png    per-method Dice (one dot per seed)
    genseg_<name>_samples.png augmented masks and the images the saved generators render for them
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, UNET_FEATURES, genseg_step_pieces, paired, shared, write_summary  # noqa: E402

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, print_summary, run_key, run_sweep  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402

METHODS = ["none", "augment", "separate", "genseg"]
DATASETS = {
    # name: (folder, n_train, n_val, spatial dims, default size / shape, default n_test)
    "jsrt": ("jsrt_lungs", 7, 2, 2, 64, None),
    "isic": ("isic2017_skin", 32, 8, 2, 64, None),
    "kvasir": ("kvasir_polyps", 32, 8, 2, 64, None),
    "hippo3d": ("hippocampus", 6, 2, 3, (40, 56, 40), 40),
}


def generator_options(a: argparse.Namespace, dims: int) -> dict[str, Any]:
    """The Pix2Pix / GenSeg generator's options from this benchmark's flags (--gen-features, --pretrain-steps, ...):
    width 16 in 2D, 8 in 3D unless --gen-features says otherwise. benchmarks/synthesis_pays.py shares the flags
    (with its own defaults), and benchmarks/nnunet_peer.py takes its generator from there."""
    width = a.gen_features or (16 if dims == 2 else 8)
    return {"features": width, "max_features": 8 * width, "disc_features": 2 * width,
            "pretrain_steps": a.pretrain_steps, "arch_every": a.arch_every, "gen_batch_size": a.gen_batch_size,
            "arch_batch_size": a.arch_batch_size, "derive_steps": a.derive_steps,
            "hypergradient": a.hypergradient, "arch_lr": a.arch_lr, "arch_weight_decay": a.arch_weight_decay}


def sweep_config(a: argparse.Namespace) -> SweepConfig:
    folder, n_train, n_val, dims, default_size, default_test = DATASETS[a.name]
    n_train = a.n_train or n_train
    n_val = a.n_val or n_val
    tag = f"genseg_{a.name}{'_' + a.tag if a.tag else ''}"
    batch = a.batch_size or (8 if dims == 2 else 2)
    train = TrainConfig(steps=a.steps, batch_size=batch, lr=a.lr, val_every=max(1, a.steps // 8), progress=False)
    if dims == 2:
        spec = PreprocessSpec(size=a.size or default_size)
        seg_kw = {"features": UNET_FEATURES[2]} if a.segmenter == "unet" else {}
    else:
        spec = PreprocessSpec(spatial_dims=3, size=None, shape_3d=tuple(default_size))
        seg_kw = {"features": UNET_FEATURES[3]} if a.segmenter == "unet" else {}
    genseg = generator_options(a, dims)
    opts = {m: dict(genseg) for m in ("genseg", "separate", "genseg_aug", "genseg_frozen")}
    test_data = None
    if getattr(a, "test_data", None):  # another site's labelled folder under ../shared/data: measured, never tuned on
        if a.ood:
            raise SystemExit("--ood and --test-data each name the out-of-domain test set: give one")
        test_data = shared(a.test_data)
    elif a.ood:
        if a.name != "jsrt":
            raise SystemExit("--ood is available for jsrt (a shifted copy of unused JSRT images)")
        from baselines import shifted_copy

        test_data = shifted_copy(shared("jsrt_lungs"), RESULTS / "_jsrt_shifted_data")
    return SweepConfig(data=shared(folder), out=RESULTS / tag, methods=a.methods, n_values=[n_train],
                       seeds=list(range(getattr(a, "first_seed", 0), a.seeds)), test_data=test_data, n_val=n_val,
                       n_test=a.n_test if a.n_test is not None else default_test, segmenter=a.segmenter,
                       segmenter_kwargs=seg_kw, spec=spec, train=train, method_options=opts, device=a.device,
                       title=f"GenSeg on {a.name}: {n_train} train + {n_val} val labels, {a.seeds} seeds")


def saved_generator_config(cfg: SweepConfig, method: str, seed: int, folder: str) -> dict[str, Any] | None:
    """The genseg.json a run saved in ``folder`` (generator_pretrained / generator), or None if there is none."""
    f = cfg.out / "runs" / run_key(method, cfg.n_values[0], seed) / folder / "genseg.json"
    return json.loads(f.read_text()) if f.exists() else None


def generator_seconds(cfg: SweepConfig) -> dict[str, dict[str, float]]:
    """Per method: mean seconds and steps of the GAN pre-training and of the derived generator's re-training."""
    out: dict[str, dict[str, float]] = {}
    for m in cfg.methods:
        pre, der = [], []
        for s in cfg.seeds:
            for folder, bucket, key in (("generator_pretrained", pre, "fit"), ("generator", der, "derive_fit")):
                saved = saved_generator_config(cfg, m, s, folder)
                if saved is not None:
                    rec = saved.get("history", {}).get(key)
                    rec = rec[0] if isinstance(rec, list) else rec
                    if rec:
                        bucket.append(rec)
        out[m] = {"pretrain_seconds": float(np.mean([r["seconds"] for r in pre])) if pre else 0.0,
                  "pretrain_steps": int(pre[0]["steps"]) if pre else 0,
                  "derive_seconds": float(np.mean([r["seconds"] for r in der])) if der else 0.0}
    return out


def searched_architectures(cfg: SweepConfig) -> dict[str, list[dict[str, Any]]]:
    """Per searching method and seed: the derived genotype and how far softmax(alpha) moved from uniform.

    ``max_shift`` is the largest |w - 1/n_ops| over all cells, from the weights as saved (4 decimals, so an
    unmoved alpha reads up to 3e-5): ~0 means the search changed nothing, and the derived genotype is then
    decided by ties.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for m in cfg.methods:
        for s in cfg.seeds:
            search = (saved_generator_config(cfg, m, s, "generator") or {}).get("search")
            if not search or "weights_up" not in search:
                continue
            rows = search["weights_down"] + search["weights_up"]
            shift = max(abs(v - 1.0 / len(r)) for r in rows for v in r)
            out.setdefault(m, []).append({"seed": s, "genotype": search["genotype"], "max_shift": shift})
    return out


def cost_estimate(records: list[dict[str, Any]], cfg: SweepConfig, gen: dict[str, dict[str, float]],
                  full_steps: int, full_pretrain: int) -> dict[str, Any]:
    """Seconds per run measured here, and what a run with ``full_steps`` segmenter steps would take.

    A run's training time = GAN pre-training + the segmenter loop (GenSeg's in-loop GAN and architecture
    updates included) + re-training of the derived generator; evaluation on the test cases comes on top.
    """
    out: dict[str, Any] = {}
    for m in cfg.methods:
        rs = [r for r in records if r.get("status") == "ok" and r["method"] == m and r["test_set"] == "in-domain"]
        if not rs:
            continue
        train_s = float(np.mean([r["train_seconds"] for r in rs]))
        total_s = float(np.mean([r["seconds"] for r in rs]))
        g = gen.get(m, {"pretrain_seconds": 0.0, "pretrain_steps": 0, "derive_seconds": 0.0})
        per_step = max(0.0, train_s - g["pretrain_seconds"] - g["derive_seconds"]) / cfg.train.steps
        per_gan = g["pretrain_seconds"] / g["pretrain_steps"] if g["pretrain_steps"] else 0.0
        # "separate" trains its generator beforehand for as many GAN steps as GenSeg makes in all
        gan_full = full_pretrain + full_steps if m == "separate" else full_pretrain if m.startswith("genseg") else 0
        out[m] = {"seconds_per_run": total_s, "train_seconds": train_s, "seconds_per_segmenter_step": per_step,
                  "seconds_per_gan_step": per_gan, **g,
                  "estimated_seconds_full_run": per_step * full_steps + per_gan * gan_full + g["derive_seconds"]
                  + (total_s - train_s),
                  "full_run": {"steps": full_steps, "gan_pretrain_steps": gan_full}}
    return out


def component_costs(cfg: SweepConfig, a: argparse.Namespace, repeats: int = 3) -> dict[str, Any]:
    """CPU seconds (process time, this process's threads) and wall seconds of each piece of a run.

    Wall time on a shared machine depends on the other jobs; CPU time does not, so the full-run estimates
    are given from both (``*_cpu`` assume this process had its threads' cores to itself).
    """
    from segsynth.data.dataset import load_dataset
    from segsynth.data.splits import split_cases
    from segsynth.generators.genseg import GenSegOptions
    from segsynth.nets.segmenters import build_segmenter

    data = load_dataset(cfg.data, cfg.spec, max_cases=cfg.n_values[0] + cfg.n_val + 2, progress=False)
    split = split_cases(data.cases, cfg.n_values[0], cfg.n_val, seed=0, n_test=None)
    k = data.info.num_classes
    opts = GenSegOptions.from_dict(cfg.method_options["genseg"])
    seg = build_segmenter(cfg.segmenter, data.info.spatial_dims, data.info.in_channels, k, **cfg.segmenter_kwargs)
    b = cfg.train.batch_size
    _, pieces = genseg_step_pieces(split.train, split.val, k, opts, seg, b, cfg.train.lr,
                                   max(1, round(b * opts.synthetic_fraction)))
    out: dict[str, Any] = {}
    for name, fn in pieces.items():
        fn()  # warm-up
        cpu, wall = [], []
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        out[name] = {"cpu_seconds": float(np.median(cpu)), "wall_seconds": float(np.median(wall))}
    steps, pre, der = a.full_steps, a.full_pretrain, a.derive_steps
    for unit in ("cpu_seconds", "wall_seconds"):
        seg_s, gan_s = out["segmenter_step"][unit], out["gan_step"][unit]
        gen_s, arch_s = out["generate_half_batch"][unit], out["arch_step"][unit]
        est = {"none": steps * seg_s,
               "separate": (pre + steps) * gan_s + steps * (seg_s + gen_s),
               "genseg": pre * gan_s + steps * (seg_s + gan_s + gen_s + arch_s / opts.arch_every) + der * gan_s}
        out[f"estimated_full_run_{unit}"] = est
    out["full_run"] = {"segmenter_steps": steps, "gan_pretrain_steps": pre, "derive_steps": der,
                       "arch_every": opts.arch_every, "batch_size": b, "threads": torch.get_num_threads()}
    return out


def dice_plot(records: list[dict[str, Any]], cfg: SweepConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["test_set"] for r in records if r.get("status") == "ok"})
    many = len(cfg.methods) > 4  # long variant names: wider panels, slanted labels
    width = max(4.5, 0.8 * len(cfg.methods) + 1.5)
    fig, axes = plt.subplots(1, len(sets), figsize=(width * len(sets), 4.4 if many else 3.6), squeeze=False)
    for ax, ts in zip(axes[0], sets):
        for i, m in enumerate(cfg.methods):
            vals = [r["dice_mean"] for r in records if r.get("status") == "ok" and r["method"] == m
                    and r["test_set"] == ts]
            if vals:
                ax.scatter([i] * len(vals), vals, s=18, alpha=0.8)
                ax.errorbar([i + 0.15], [np.mean(vals)], yerr=[np.std(vals)], fmt="s", color="k", ms=4)
        ax.set_xticks(range(len(cfg.methods)), cfg.methods, rotation=30 if many else 0, ha="right" if many else "center",
                      fontsize=8 if many else None)
        ax.set_title(ts)
        ax.set_ylabel("test Dice (mean over cases)")
        ax.grid(alpha=0.3)
    fig.suptitle(cfg.title or "", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def samples_plot(cfg: SweepConfig, path: Path, n: int = 4) -> bool:
    """Masks drawn by each saved generator (augmented real masks) and the images it renders for them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segsynth.data.dataset import load_dataset
    from segsynth.generators.genseg import GenSegGenerator

    gens = {}
    for m in ("separate", "genseg"):
        d = cfg.out / "runs" / run_key(m, cfg.n_values[0], cfg.seeds[0]) / "generator"
        if (d / "genseg.json").exists():
            gens[m] = GenSegGenerator.load(d)
    if not gens:
        return False
    data = load_dataset(cfg.data, cfg.spec, max_cases=12, progress=False)
    labelled = [c for c in data.cases if c.mask is not None][:8]
    fig, axes = plt.subplots(1 + 2 * len(gens), n, figsize=(2.2 * n, 2.2 * (1 + 2 * len(gens))), squeeze=False)

    def show(ax: Any, img: np.ndarray, title: str) -> None:
        if img.ndim == 4:  # 3D: middle slice along the first axis
            img = img[:, img.shape[1] // 2]
        if img.ndim == 3:
            img = img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]
        ax.imshow(np.clip((img - img.min()) / (np.ptp(img) + 1e-6), 0, 1), cmap="gray")
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for j in range(n):
        show(axes[0][j], labelled[j].image, f"real {labelled[j].case_id}")
    row = 1
    for m, gen in gens.items():
        gen.set_source_masks(labelled)
        for j in range(n):
            pair = gen.sample_pair(1000 + j)
            show(axes[row][j], pair.mask[None].astype(np.float32), f"{m}: augmented mask")
            show(axes[row + 1][j], pair.image, f"{m}: generated")
        row += 2
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--methods", default=",".join(METHODS), type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=None, help="2D working size (default 64)")
    p.add_argument("--steps", type=int, default=300, help="segmenter steps per run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--segmenter", default="unet", choices=["unet", "deeplab"])
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None, help="test cases (default: all unused; 40 in 3D)")
    p.add_argument("--ood", action="store_true", help="jsrt only: also test on a shifted copy (out of domain)")
    p.add_argument("--gen-features", type=int, default=None, help="generator width (default 16 in 2D, 8 in 3D; "
                   "Pix2Pix: 64)")
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--arch-batch-size", type=int, default=4)
    p.add_argument("--pretrain-steps", type=int, default=300, help="GAN steps before the segmenter starts")
    p.add_argument("--arch-every", type=int, default=2, help="architecture update every K segmenter steps")
    p.add_argument("--arch-lr", type=float, default=3e-4, help="Adam learning rate of alpha (DARTS: 3e-4)")
    p.add_argument("--arch-weight-decay", type=float, default=1e-3,
                   help="L2 weight decay of alpha inside Adam (DARTS: 1e-3)")
    p.add_argument("--derive-steps", type=int, default=100)
    p.add_argument("--hypergradient", default="finite_difference", choices=["finite_difference", "exact"])
    p.add_argument("--full-steps", type=int, default=2000, help="segmenter steps of the 'full run' estimate")
    p.add_argument("--full-pretrain", type=int, default=2000, help="GAN pre-training steps of the full run")
    p.add_argument("--cost-only", action="store_true",
                   help="only time the pieces of a run (segmenter step, GAN step, generation, architecture step) "
                        "and estimate a full run; writes genseg_<name>_cost.json")
    p.add_argument("--tag", default="", help="suffix of the output names (keeps runs with other flags apart)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = sweep_config(a)
    if a.cost_only:
        from segsynth.utils.files import write_json

        costs = component_costs(cfg, a)
        path = RESULTS / f"{cfg.out.name}_cost.json"
        write_json(path, {"config": {k: v for k, v in vars(a).items()}, "costs": costs})
        print(json.dumps(costs, indent=1))
        print(f"cost: {path}")
        return
    t0 = time.perf_counter()
    records = run_sweep(cfg)
    print_summary(records, cfg.out)
    comparisons = []
    for a_m, b_m in (("genseg", "none"), ("genseg", "augment"), ("genseg", "separate"), ("separate", "none"),
                     ("augment", "none"), ("genseg_aug", "augment"), ("genseg_aug", "genseg"),
                     ("genseg", "genseg_frozen")):
        if a_m in cfg.methods and b_m in cfg.methods:
            comparisons += paired(records, a_m, b_m)
    name = cfg.out.name
    cfg_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    cfg_json["flags"] = {k: v for k, v in vars(a).items()}
    cost = cost_estimate(records, cfg, generator_seconds(cfg), a.full_steps, a.full_pretrain)
    arch = searched_architectures(cfg)
    path = write_summary(name, {**cfg_json, "cost": cost, "wall_seconds": time.perf_counter() - t0,
                                "searched_architectures": arch}, records, comparisons)
    dice_plot(records, cfg, RESULTS / f"{name}_dice.png")
    samples_plot(cfg, RESULTS / f"{name}_samples.png")
    for m, c in cost.items():
        print(f"{m:9s} {c['seconds_per_run']:7.1f} s/run here ({c['seconds_per_segmenter_step']:.3f} s/step, "
              f"GAN {c['seconds_per_gan_step']:.3f} s/step); full run ({a.full_steps} steps) "
              f"~{c['estimated_seconds_full_run'] / 60:.1f} min")
    for c in comparisons:
        print(f"{c['test_set']:12s} {c['method_a']} - {c['method_b']}: {c['mean_diff']:+.4f} "
              f"(Wilcoxon p={c['wilcoxon_p']:.3g}, n={c['n']})")
    for m, runs in arch.items():
        print(f"{m}: softmax(alpha) moved at most {max(r['max_shift'] for r in runs):.4f} from uniform")
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
