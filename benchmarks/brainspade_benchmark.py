"""brainSPADE benchmark (issue 3): can segmenters be trained on fully synthetic data?

For each dataset it fits the label generator (AutoencoderKL + latent diffusion) and the image generator
(SPADE VAE-GAN) on the real training cases, samples a synthetic set, and trains three segmenters with the
same loop and budget:

* R: real training pairs only;
* S: synthetic pairs only (the paper asks for >= 2,000);
* H: real + synthetic (half of each batch from each).

They are tested on real held-out cases (Dice per class, paired tests R vs S and R vs H on per-case Dice).
It also measures sampling speed (pairs/s) with DDIM 25 / 50 / 100 steps against DDPM 1000 (and, with
``--dice-per-sampler``, the Dice of S trained on each sampler's output), a quality / memorisation audit of
the synthetic set, time and peak memory per stage, and on AOMIC an out-of-domain experiment: the test
subject's images are given an inverted, T2-like contrast and used (without labels) as the style domain;
S_ood is trained on synthetic pairs in that style and compared with R on the re-contrasted test subject.

Datasets (``--datasets``): ``aomic`` (CSF / grey / white matter; 2D slices of two subjects: train on
sub-0001, test on sub-0002, a fifth of the training subject's slices for validation) and ``hippocampus``
(2D slices of MSD hippocampus volumes: ``--hippo-train`` / ``--hippo-val`` / ``--hippo-test`` volumes).

Presets: ``--preset reduced`` fits the 2-core CPU budget here (minutes; generators far from converged),
``--preset full`` is the paper-like scale (hours on CPU, minutes to an hour on a GPU). Any option given
explicitly overrides the preset. Writes ``<out>/brainspade_benchmark.json`` and PNG figures.

    .venv/bin/python benchmarks/brainspade_benchmark.py --preset reduced --out benchmarks/results/brainspade
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, UNET_FEATURES, machine, parse_sampler_spec, shared  # noqa: E402
from segsynth.data.case import Case  # noqa: E402

log = logging.getLogger("brainspade_benchmark")

PRESETS: dict[str, dict[str, Any]] = {
    "reduced": dict(size=64, hippo_size=32, ae_steps=150, ldm_steps=300, spade_steps=150, seg_steps=150,
                    seg_batch=16, n_synthetic=300, speed_n=8, samplers="ddim25,ddim50,ddim100,ddpm1000",
                    hippo_train=4, hippo_val=2, hippo_test=12, seeds="0", ae_batch=8, spade_batch=8,
                    n_synthetic_sampler=200, ae_lr=5e-4, ldm_lr=5e-4, lr_g=2e-4, lr_d=4e-4),
    "full": dict(size=64, hippo_size=64, ae_steps=3000, ldm_steps=5000, spade_steps=5000, seg_steps=2000,
                 seg_batch=16, n_synthetic=2000, speed_n=64, samplers="ddim25,ddim50,ddim100,ddpm1000",
                 hippo_train=4, hippo_val=2, hippo_test=40, seeds="0,1,2", ae_batch=16, spade_batch=8,
                 n_synthetic_sampler=2000, ae_lr=2e-4, ldm_lr=2e-4, lr_g=1e-4, lr_d=4e-4),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="reduced")
    p.add_argument("--datasets", default="aomic,hippocampus")
    p.add_argument("--out", type=Path, default=RESULTS / "brainspade")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--dice-per-sampler", action="store_true",
                   help="train S on each sampler's output too (every seed), paired-tested against the first sampler")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="autocast of the generator networks' training and of the main sampling (segmenters: fp32); "
                        "a sampler spec may name its own: --samplers ddim50,dpm10@bf16")
    p.add_argument("--no-ood", action="store_true", help="skip the out-of-domain experiment")
    p.add_argument("--segmenters", default="R,S,H", type=lambda v: v.split(","),
                   help="which of R (real), S (synthetic), H (both) to train (a run compared to another with "
                        "fp32 segmenters can skip R: it trains the same R)")
    p.add_argument("--generators", type=Path, default=None,
                   help="folder of fitted generators, one sub-folder per dataset: loaded when there (the fitting "
                        "stages are skipped), else fitted and saved there, so that several sampler studies share "
                        "one fit")
    p.add_argument("--draw-per-seed", action="store_true",
                   help="with --dice-per-sampler: each segmenter seed trains on its own draw of pairs (else one "
                        "draw per sampler, shared by the seeds)")
    p.add_argument("--compare-to", type=Path, default=None,
                   help="an earlier brainspade_benchmark.json: pair each segmenter with its namesake there")
    for key, val in PRESETS["reduced"].items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(val), default=None)
    a = p.parse_args(argv)
    for key, val in PRESETS[a.preset].items():
        if getattr(a, key) is None:
            setattr(a, key, val)
    return a


# ------------------------------------------------------------------------------------------------ data


def load_aomic(a: argparse.Namespace) -> dict[str, Any]:
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.generators.brainspade import assign_volumes

    data = load_dataset(shared("aomic_brain"), PreprocessSpec(spatial_dims=2, size=a.size), progress=False)
    assign_volumes(data.cases, r"^(sub-\d+)_ax(\d+)$")
    subj = sorted({c.meta["volume_id"] for c in data.cases})
    train_all = [c for c in data.cases if c.meta["volume_id"] == subj[0]]
    test = [c for c in data.cases if c.meta["volume_id"] == subj[1]]
    val = [c for i, c in enumerate(train_all) if i % 5 == 2]
    train = [c for i, c in enumerate(train_all) if i % 5 != 2]
    return {"name": "aomic_brain", "info": data.info, "train": train, "val": val, "test": test,
            "split": f"train {subj[0]} ({len(train)} slices, {len(val)} for validation), test {subj[1]} "
                     f"({len(test)} slices)"}


def load_hippocampus(a: argparse.Namespace) -> dict[str, Any]:
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.splits import split_cases

    n_vol = a.hippo_train + a.hippo_val + a.hippo_test
    data = load_dataset(shared("hippocampus"), PreprocessSpec(spatial_dims=2, size=a.hippo_size,
                                                               keep_empty_slices=0.0),
                        progress=False, max_cases=n_vol)
    split = split_cases(data.cases, n_train=a.hippo_train, n_val=a.hippo_val, seed=0, n_test=a.hippo_test)
    return {"name": "hippocampus", "info": data.info, "train": split.train, "val": split.val, "test": split.test,
            "split": f"{a.hippo_train} / {a.hippo_val} / {a.hippo_test} volumes (train / val / test), slices "
                     f"{len(split.train)} / {len(split.val)} / {len(split.test)}"}


def pseudo_t2(case: Case) -> Case:
    """A contrast-inverted copy (T1 -> T2-like: CSF bright, white matter dark), background kept dark."""
    x = case.image.astype(np.float32)
    lo, hi = np.percentile(x, 1), np.percentile(x, 99.5)
    u = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    fg = u > 0.08
    y = np.where(fg, 1.1 - u, 0.0).astype(np.float32)
    y = (y - y[fg].mean()) / max(float(y[fg].std()), 1e-6) if fg.any() else y
    meta = {**case.meta, "domain": "pseudo-T2", "dataset_root": "pseudo-T2"}
    return Case(case.case_id + "_t2", y.astype(np.float32), None if case.mask is None else case.mask.copy(), meta)


# ------------------------------------------------------------------------------------------------ stages


def timed(fn, device: torch.device):
    from segsynth.utils.device import peak_memory_mb, reset_peak_memory

    reset_peak_memory(device)
    t0 = time.perf_counter()
    out = fn()
    return out, {"seconds": time.perf_counter() - t0, "peak_memory_mb": peak_memory_mb(device)}


def train_and_test(name: str, source, val: list[Case], test: list[Case], info, a, seed: int,
                   device: torch.device) -> dict[str, Any]:
    from segsynth.evaluate.metrics import case_metrics
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.inference import predict
    from segsynth.segment.train import TrainConfig, train_segmenter
    from segsynth.utils.seed import derive_seed, seeded_scope

    with seeded_scope(derive_seed(seed, "segmenter-init")):  # initial weights from the seed, as in sweeps
        model = build_segmenter("unet", 2, info.in_channels, info.num_classes, features=UNET_FEATURES[2])
    cfg = TrainConfig(steps=a.seg_steps, batch_size=a.seg_batch, lr=3e-3, val_every=max(1, a.seg_steps // 5),
                      seed=seed, progress=False)
    result, cost = timed(lambda: train_segmenter(model, source, val, cfg, num_classes=info.num_classes,
                                                 device=device), device)
    # Slices of several test volumes: the volume is the paired tests' unit (one test subject, as in AOMIC: the slice).
    by_volume = len({c.meta.get("volume_id") for c in test}) > 1
    per_case = []
    for c in test:
        m = case_metrics(predict(result.model, c.image, info.num_classes, device=device), c.mask, info.labels)
        vid = {"volume_id": str(c.meta["volume_id"])} if by_volume and c.meta.get("volume_id") is not None else {}
        per_case.append({"case_id": c.case_id, **vid, "dice": m["dice"], "dice_mean": m["dice_mean"]})
    classes = list(per_case[0]["dice"]) if per_case else []
    return {"segmenter": name, "seed": seed, "val_dice": result.best_val_dice, **cost,
            "dice_mean": float(np.mean([p["dice_mean"] for p in per_case])),
            "dice_per_class": {k: float(np.mean([p["dice"][k] for p in per_case])) for k in classes},
            "per_case": per_case}


def paired(runs: list[dict[str, Any]], a_name: str, b_name: str) -> dict[str, Any]:
    """Paired tests of two segmenters over test units (volumes when recorded, else slices), each averaged over the
    seeds, plus a seed-level t-test."""
    from segsynth.evaluate.stats import compare_methods

    records = [{"method": r["segmenter"], "n_train": 0, "seed": r["seed"], "status": "ok",
                "per_case": r["per_case"]} for r in runs if r.get("per_case")]
    return {"a": a_name, "b": b_name, **compare_methods(records, a_name, b_name, 0)}


def compare_to_reference(path: Path, dataset: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each segmenter of this run against the same-named segmenter of an earlier run (``--compare-to``: e.g. this
    run's generators trained in bf16, the earlier one's in fp32), paired over the same test cases and seeds."""
    earlier = json.loads(Path(path).read_text())
    ref = next((d for d in earlier.get("datasets", []) if d["dataset"] == dataset), None)
    if ref is None or not all("per_case" in r for r in ref.get("runs", [])):
        log.warning("--compare-to %s: no per-case runs of %s there; nothing compared", path, dataset)
        return []
    both = runs + [{**r, "segmenter": r["segmenter"] + "@ref"} for r in ref["runs"]]
    names = sorted({r["segmenter"] for r in runs} & {r["segmenter"] for r in ref["runs"]})
    out = [paired(both, n, n + "@ref") for n in names]
    for c in out:
        log.info("%s vs the reference run: %+.4f (Wilcoxon p %.3g, n %s)", c["a"], c.get("mean_diff", float("nan")),
                 c.get("wilcoxon_p", float("nan")), c.get("n"))
    return out


def save_figure(path: Path, ds: dict[str, Any], synth: list[Case], runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(6, len(synth))
    fig, axes = plt.subplots(3, n + 1, figsize=(2.2 * (n + 1), 6.6))
    real = ds["train"][0]
    axes[0, 0].imshow(real.image[0], cmap="gray")
    axes[0, 0].set_title("real image", fontsize=8)
    axes[1, 0].imshow(real.mask, cmap="viridis", vmin=0, vmax=ds["info"].num_classes - 1)
    axes[1, 0].set_title("real labels", fontsize=8)
    for j in range(n):
        axes[0, j + 1].imshow(synth[j].image[0], cmap="gray")
        axes[0, j + 1].set_title(f"synthetic {j}", fontsize=8)
        axes[1, j + 1].imshow(synth[j].mask, cmap="viridis", vmin=0, vmax=ds["info"].num_classes - 1)
    for ax in axes[:2].ravel():
        ax.axis("off")
    for ax in axes[2, 1:]:
        ax.remove()
    ax = fig.add_subplot(3, 1, 3)
    axes[2, 0].remove()
    names = sorted({r["segmenter"] for r in runs}, key=lambda s: ("RSH".find(s[0]), s))
    classes = list(runs[0]["dice_per_class"])
    width = 0.8 / max(1, len(names))
    for i, nme in enumerate(names):
        rs = [r for r in runs if r["segmenter"] == nme]
        vals = [np.mean([r["dice_per_class"][k] for r in rs]) for k in classes]
        ax.bar(np.arange(len(classes)) + i * width, vals, width, label=nme)
    ax.set_xticks(np.arange(len(classes)) + width * (len(names) - 1) / 2, classes)
    ax.set_ylabel("test Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=len(names))
    ax.set_title(f"{ds['name']}: segmenters on real (R), synthetic (S), both (H)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fit_generators(gen, ds: dict[str, Any], unlabelled: list[Case], out: dict[str, Any], device: torch.device) -> None:
    """Fit the label and the image generator on the training cases; their costs and losses go to ``out``."""
    stats_l, cost = timed(lambda: gen.labels.fit(ds["train"], val=ds["val"], device=device, seed=1), device)
    out["stages"]["label_generator_fit"] = {**cost, "ae_seconds": stats_l["ae_seconds"],
                                            "ldm_seconds": stats_l["ldm_seconds"],
                                            "ae_l1": stats_l["ae"]["l1_final_mean"],
                                            "val_ae_l1": stats_l.get("val_ae_l1"),
                                            "ldm_mse": stats_l["ldm"]["mse_final_mean"]}
    log.info("label generator: %s", out["stages"]["label_generator_fit"])
    stats_i, cost = timed(lambda: gen.images.fit(ds["train"], val=ds["val"], unlabelled=unlabelled, device=device,
                                                 seed=2), device)
    out["stages"]["image_generator_fit"] = {**cost, "gan": stats_i["gan"]["final"], "domains": stats_i["domains"],
                                            "classifier": stats_i["classifier"]}
    log.info("image generator: %s", out["stages"]["image_generator_fit"])


def run_dataset(ds: dict[str, Any], a: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from segsynth.evaluate.privacy import memorisation_audit
    from segsynth.evaluate.quality import quality_report
    from segsynth.generators.brainspade import BrainSpadeGenerator, sampling_speed
    from segsynth.segment.sources import CaseSource, MixedSource
    from segsynth.utils.seed import derive_seed, torch_generator

    info = ds["info"]
    out: dict[str, Any] = {"dataset": ds["name"], "split": ds["split"], "classes": info.labels, "stages": {}}
    log.info("%s: %s", ds["name"], ds["split"])
    ood = ds["name"] == "aomic_brain" and not a.no_ood
    target = [pseudo_t2(c) for c in ds["test"]] if ood else []
    unlabelled = [Case(c.case_id, c.image, None, c.meta) for c in target]
    gen = BrainSpadeGenerator(spatial_dims=2, num_classes=info.num_classes, in_channels=info.in_channels,
                              ae_steps=a.ae_steps, ldm_steps=a.ldm_steps, spade_steps=a.spade_steps,
                              ae_batch_size=a.ae_batch, spade_batch_size=a.spade_batch, ae_lr=a.ae_lr,
                              ldm_lr=a.ldm_lr, lr_g=a.lr_g, lr_d=a.lr_d,
                              target_style_prob=0.25 if ood else 0.0, progress=False, precision=a.precision)
    saved = a.generators / ds["name"] if a.generators is not None else None
    if saved is not None and saved.exists():
        gen = BrainSpadeGenerator.load(saved, device)
        out["stages"]["generators_loaded_from"] = str(saved)
        log.info("generators loaded from %s (fitting skipped)", saved)
    else:
        fit_generators(gen, ds, unlabelled, out, device)
        if saved is not None:
            gen.save(saved)

    synth, cost = timed(lambda: gen.sample(a.n_synthetic, generator=torch_generator(3), steps=50,
                                           precision=a.precision), device)
    out["stages"]["sampling_ddim50"] = {**cost, "n": len(synth), "pairs_per_s": len(synth) / cost["seconds"]}
    log.info("sampled %d pairs: %s", len(synth), out["stages"]["sampling_ddim50"])

    # quality and memorisation audit (real reference = held-out test images, never trained on)
    q, cost = timed(lambda: quality_report(ds["test"], synth[: max(len(ds["test"]), 200)]), device)
    out["quality"] = {**q, **cost}
    audit = memorisation_audit(synth[:200], ds["train"], reference=ds["test"][:100])
    out["privacy"] = audit.summary()
    out["label_stats"] = {
        "synthetic_class_fraction": {info.labels[k]: float(np.mean([(c.mask == k).mean() for c in synth]))
                                     for k in info.labels},
        "real_class_fraction": {info.labels[k]: float(np.mean([(c.mask == k).mean() for c in ds["train"]]))
                                for k in info.labels},
    }

    # segmenters R / S / H
    runs = []
    seeds = [int(s) for s in str(a.seeds).split(",")]
    k = info.num_classes
    for seed in seeds:
        real = CaseSource(ds["train"], num_classes=k)
        syn = CaseSource(synth, num_classes=k)
        for name, source in [("R", real), ("S", syn), ("H", MixedSource([(real, 0.5), (syn, 0.5)]))]:
            if name not in a.segmenters:
                continue
            r = train_and_test(name, source, ds["val"], ds["test"], info, a, seed, device)
            runs.append(r)
            log.info("%s seed %d: test Dice %.3f %s (%.0f s)", name, seed, r["dice_mean"], r["dice_per_class"],
                     r["seconds"])
    out["comparisons"] = [paired(runs, "R", x) for x in ("S", "H") if {"R", x} <= set(a.segmenters)]

    # sampling speed per sampler
    speed = []
    specs = [v for v in a.samplers.split(",") if v]
    for spec in specs:
        sampler, steps, prec = parse_sampler_spec(spec, a.precision)  # ddim25, dpm15, ddpm1000, dpm10@bf16
        res = sampling_speed(gen, a.speed_n, sampler=sampler, steps=steps, batch_size=min(64, a.speed_n),
                             precision=prec)
        res["label"] = spec
        if a.dice_per_sampler:
            draws: dict[int, list[Case]] = {}
            class_fraction = []
            dice = []
            for seed in seeds:
                draw = derive_seed(5, "sampler-draw", seed) if a.draw_per_seed else 5
                if draw not in draws:
                    draws[draw] = gen.sample(a.n_synthetic_sampler, generator=torch_generator(draw), sampler=sampler,
                                             steps=steps, precision=prec)
                    class_fraction.append([float(np.mean([(c.mask == kk).mean() for c in draws[draw]]))
                                           for kk in range(k)])
                syn_s = draws[draw]
                r = train_and_test(f"S_{spec}", CaseSource(syn_s, num_classes=k), ds["val"], ds["test"], info, a,
                                   seed, device)
                runs.append(r)
                dice.append(r["dice_mean"])
            res["dice_S"] = float(np.mean(dice))
            res["dice_S_per_seed"] = dice
            res["synthetic_class_fraction"] = {info.labels[kk]: float(np.mean([f[kk] for f in class_fraction]))
                                               for kk in info.labels}
        speed.append(res)
        log.info("sampling %s: %.2f pairs/s%s", spec, res["pairs_per_s"],
                 f", S Dice {res['dice_S']:.3f}" if "dice_S" in res else "")
    out["sampling_speed"] = speed
    if a.dice_per_sampler and len(specs) > 1:  # each sampler's S against the first sampler's (same seeds)
        out["sampler_comparisons"] = [paired(runs, f"S_{spec}", f"S_{specs[0]}") for spec in specs[1:]]
        for c in out["sampler_comparisons"]:
            log.info("%s vs %s: %s", c["a"], c["b"], {kk: v for kk, v in c.items() if kk not in ("a", "b")})

    # out of domain: style of the re-contrasted test subject
    if ood:
        syn_t = gen.sample(a.n_synthetic, generator=torch_generator(4), style_domain="target", steps=50)
        k_runs = []
        for seed in seeds[:1]:
            real = CaseSource(ds["train"], num_classes=k)
            val_t = [pseudo_t2(c) for c in ds["val"]]
            r_real = train_and_test("R_on_target", real, ds["val"], target, info, a, seed, device)
            r_ood = train_and_test("S_ood", CaseSource(syn_t, num_classes=k), val_t, target, info, a, seed, device)
            k_runs += [r_real, r_ood]
        out["out_of_domain"] = {
            "target": "test subject with inverted (T2-like) contrast, images given to the generator unlabelled",
            "runs": [{kk: v for kk, v in r.items() if kk != "per_case"} for r in k_runs],
            "comparison": paired([{**r, "segmenter": r["segmenter"]} for r in k_runs], "R_on_target", "S_ood"),
            "quality_vs_target": quality_report(target, syn_t[:200]),
        }
        for r in k_runs:
            log.info("OOD %s: Dice on target %.3f", r["segmenter"], r["dice_mean"])
    out["runs"] = runs  # with per-case Dice, so that another run (e.g. in bf16) can be paired with this one
    if a.compare_to is not None:
        out["compared_to"] = compare_to_reference(a.compare_to, ds["name"], runs)
    save_figure(a.out / f"{ds['name']}_brainspade.png", ds, synth, runs)
    return out


def main(argv: list[str] | None = None) -> int:
    from segsynth.utils.device import resolve_device
    from segsynth.utils.files import write_json

    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    results: dict[str, Any] = {"benchmark": "brainspade", "config": config, "datasets": []}
    t0 = time.perf_counter()
    loaders = {"aomic": load_aomic, "hippocampus": load_hippocampus}
    for name in [d.strip() for d in a.datasets.split(",") if d.strip()]:
        if name not in loaders:
            sys.exit(f"unknown dataset {name!r}; choose from {sorted(loaders)}")
        results["datasets"].append(run_dataset(loaders[name](a), a, device))
        results["total_seconds"] = time.perf_counter() - t0
        results["machine"] = machine()
        write_json(a.out / "brainspade_benchmark.json", results)
    print(json.dumps({d["dataset"]: {r["segmenter"]: round(r["dice_mean"], 3) for r in d["runs"]}
                      for d in results["datasets"]}, indent=1))
    print(f"total {results['total_seconds']:.0f} s; results in {a.out / 'brainspade_benchmark.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
