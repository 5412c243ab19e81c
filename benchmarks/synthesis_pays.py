"""Do synthetic pairs pay (issue 11)? Label-faithful GenSeg generators against classical augmentation.

Two stages, both on the GenSeg benchmark's tasks and splits (benchmarks/genseg_benchmark.py):

    python benchmarks/synthesis_pays.py jsrt --stage fidelity   # choose the recipe on validation pairs
    python benchmarks/synthesis_pays.py jsrt --ood --stage sweep --variants augment,genseg_aug,genseg_aug_seg
    # --seg-weight auto (default): the weight with the most faithful pairs in the fidelity stage

``fidelity`` (split of seed 0; nothing touches test cases): an evaluator U-Net trained on the N real pairs with
classical augmentation (``--evaluator term``: a stand-in for the ``augment`` model of the split; ``reference``:
that model itself, the one the sweep's label fidelity uses) segments (a) the real validation
pairs and (b) pairs the GenSeg generator renders from augmented training masks, after G GAN steps, for each
weight of the segmentation term (``seg_weight``); label fidelity = mean Dice against the mask. Also a
sharpness ratio (mean |image gradient| of generated / real training images) and the seconds of each recipe.
The generator trains on from one checkpoint of ``--gan-steps`` to the next (each leg a new ``fit``: the weights
carry on, Adam's moments restart), so the longest setting is close to, not the same as, one fit of that length.

``sweep``: one GenSeg-benchmark sweep per variant (``augment``, ``genseg_aug`` as before, ``genseg_aug_seg`` with
the segmentation term, ``genseg_aug_wf`` with the segmenter's hypergradient reaching the generator weights, ...),
3 seeds, paired Wilcoxon over test cases of every variant against ``augment``; seconds and peak memory per run.

Writes under benchmarks/results/: ``synthesis_pays_<name>_fidelity.json`` + ``.png`` and
``synthesis_pays_<name>.json`` + ``_dice.png`` (sweeps in ``synthesis_pays_<name>/<variant>/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, paired, write_summary  # noqa: E402
from genseg_benchmark import DATASETS, dice_plot, sweep_config  # noqa: E402
from learned_transforms_benchmark import SCALES as LT_SCALES  # noqa: E402

from segsynth.experiments.fidelity_report import block_edges  # noqa: E402
from segsynth.experiments.sweep import print_summary, run_sweep  # noqa: E402

#: learned transforms at the sizes of learned_transforms_benchmark.py's 3D part (its medium scale)
_LT_3D = LT_SCALES["medium"]["oneshot3d"]
_LEARNED_3D: dict[str, Any] = {
    **{k: _LT_3D[k] for k in ("reg_steps", "app_steps", "reg_batch", "reg_channels", "reg_final_channels",
                              "app_channels")},
    "max_unlabelled": _LT_3D["n_unlabelled"]}

#: variant -> (method, extra method options); ``seg_weight`` of "genseg_aug_seg" comes from --seg-weight
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "augment": ("augment", {}),
    "genseg_aug": ("genseg_aug", {}),
    "genseg_aug_seg": ("genseg_aug", {"seg_weight": None}),
    "genseg_aug_wf": ("genseg_aug", {"weight_feedback": True}),
    "genseg_aug_seg_wf": ("genseg_aug", {"seg_weight": None, "weight_feedback": True}),
    # GenSeg end to end at lower cost (issue 12): a GAN step every 2nd segmenter step, alpha updated less often
    # once it settles (interval doubling up to 16)
    "genseg_aug_fast": ("genseg_aug", {"gen_every": 2, "arch_every_max": 16}),
    # issue 12 in 3D: every GAN step kept (gen_every 1, as the full setting), each on a 32³ crop of the volume
    # (gan_patch; the generator still renders whole volumes), alpha updated less often once it settles
    "genseg_aug_gp": ("genseg_aug", {"arch_every_max": 16, "gan_patch": [32, 32, 32]}),
    # issue 12 in 3D: the full setting's GAN steps on whole volumes (gen_every 1), only alpha updated less often
    # once it settles: what the adaptive schedule alone costs and saves
    "genseg_aug_ae16": ("genseg_aug", {"arch_every_max": 16}),
    # issue 11 in 3D, where the generated volumes are unfaithful (fidelity ratio 0.45-0.62): the setting above
    # plus the segmentation term (weight from --seg-weight), which trains the generator to render what its mask says
    "genseg_aug_seg_ae16": ("genseg_aug", {"seg_weight": None, "arch_every_max": 16}),
    "genseg": ("genseg", {}),  # the paper's GenSeg: generated pairs with the real ones, no classical augmentation
    "genseg_fast": ("genseg", {"gen_every": 2, "arch_every_max": 16}),
    # the same Pix2Pix trained before the segmenter (all its GAN steps first, no feedback), pairs stacked with
    # classical augmentation: the cheapest synthetic recipe (a segmenter step costs a plain step + 1 render)
    "separate_aug": ("separate", {"augment_real": True}),
    # its real : synthetic ratio (issue 11: a measured default; the fraction is chosen on validation Dice only)
    "separate_aug_rf25": ("separate", {"augment_real": True, "real_fraction": 0.25}),
    "separate_aug_rf75": ("separate", {"augment_real": True, "real_fraction": 0.75}),
    # synthetic pairs the split's `augment` model segments with Dice < the threshold are redrawn (up to 8 tries,
    # then the best-scoring draw is kept): the threshold is chosen on validation Dice
    "separate_aug_mf50": ("separate", {"augment_real": True, "min_fidelity": 0.5}),
    "separate_aug_mf70": ("separate", {"augment_real": True, "min_fidelity": 0.7}),
    # the generator trained longer before the segmenter (1,000 + as many GAN steps as segmenter steps: 1,400 at
    # 400 steps, 2.3x the 600 of separate_aug), alone and with the filter
    "separate_aug_long": ("separate", {"augment_real": True, "pretrain_steps": 1000}),
    "separate_aug_long_mf50": ("separate", {"augment_real": True, "pretrain_steps": 1000, "min_fidelity": 0.5}),
    "separate_aug_long_mf70": ("separate", {"augment_real": True, "pretrain_steps": 1000, "min_fidelity": 0.7}),
    # pretrain on real + synthetic, then fine-tune on the real pairs alone, in one run: generated pairs only in
    # the first half of the steps (synthetic_until; GenSeg's generator stops updating there too)
    "separate_aug_su50": ("separate", {"augment_real": True, "synthetic_until": 0.5}),
    "genseg_aug_su50": ("genseg_aug", {"synthetic_until": 0.5}),
    # beyond the paper: the generator also renders the task's label maps that have no image (ISIC's 2,000
    # masks_only_train2000/; "{data}" is the task's data folder), drawn with the augmented real masks. The GAN
    # learns from the labelled pairs only; augment cannot use these masks at all
    "separate_aug_xm": ("separate", {"augment_real": True, "extra_masks": "{data}/masks_only_train2000"}),
    "genseg_aug_fast_xm": ("genseg_aug", {"gen_every": 2, "arch_every_max": 16,
                                          "extra_masks": "{data}/masks_only_train2000"}),
    # Zhao et al.'s learned transforms (3D, hippocampus): the first labelled volume is the atlas, registered to up
    # to 100 unlabelled volumes of the split's pool; pairs = the atlas and its labels under a drawn spatial
    # transform and a drawn appearance transform; half of each batch real, both streams classically augmented.
    # Network sizes and fit steps of learned_transforms_benchmark.py's 3D part.
    "learned_aug": ("learned", {"augment_real": True, "real_fraction": 0.5, **_LEARNED_3D}),
    "learned_aug_rf75": ("learned", {"augment_real": True, "real_fraction": 0.75, **_LEARNED_3D}),
    # the same, learned pairs in the first half of the steps, then the real pairs alone (as separate_aug_su50)
    "learned_aug_su50": ("learned", {"augment_real": True, "real_fraction": 0.5, "synthetic_until": 0.5,
                                     **_LEARNED_3D}),
    # beyond the paper: both labelled volumes as atlases, each registered to the same unlabelled volumes (one more
    # fit per split; the first atlas's is the cached one of learned_aug); learned pairs of each in equal shares
    "learned_aug_ma": ("learned", {"augment_real": True, "real_fraction": 0.5, "atlases": "all", **_LEARNED_3D}),
    # learned transforms use the unlabelled volumes; so does semi-supervised training. FixMatch on the split's
    # unlabelled pool (augment's labelled stream), and learned_aug's stream with FixMatch on the same pool: do
    # the learned pairs add to what the unlabelled volumes give by semi-supervision?
    "fixmatch": ("fixmatch", {}),
    "learned_aug_fm": ("fixmatch", {"labelled": "learned", "augment_real": True, "real_fraction": 0.5,
                                    **_LEARNED_3D}),
    "learned_aug_ma_fm": ("fixmatch", {"labelled": "learned", "augment_real": True, "real_fraction": 0.5,
                                       "atlases": "all", **_LEARNED_3D}),
    # brainSPADE's image generator (SPADE VAE-GAN with a style encoder) on the real masks: half of each batch
    # real, half synthetic (500 pairs drawn once, each mask painted with the style code of another training
    # image), both streams classically augmented; 1,000 GAN steps, as separate_aug's Pix2Pix had
    "spade_aug": ("spade", {"mode": "mixed", "augment_real": True, "real_weight": 0.5, "spade_steps": 1000}),
    # + the segmentation term in SPADE's objective (a U-Net trained 200 steps on the real pairs must find each
    # generated image's label map; weight 2, the weight genseg_aug_seg was measured with)
    "spade_aug_seg": ("spade", {"mode": "mixed", "augment_real": True, "real_weight": 0.5, "spade_steps": 1000,
                                "lambda_seg": 2.0}),
    # the two above with the decoder up-sampling bilinearly between SPADE blocks instead of by nearest neighbour
    # (MONAI's default; a montage showed 8-pixel squares at 64². Measured: nearest leaves mostly a 2-pixel
    # structure, linear less of it, and spade_aug_seg_lin scored 1.8 Dice below spade_aug_seg on Kvasir)
    "spade_aug_lin": ("spade", {"mode": "mixed", "augment_real": True, "real_weight": 0.5, "spade_steps": 1000,
                                "upsampling": "linear"}),
    "spade_aug_seg_lin": ("spade", {"mode": "mixed", "augment_real": True, "real_weight": 0.5, "spade_steps": 1000,
                                    "lambda_seg": 2.0, "upsampling": "linear"}),
    # the same recipes trained under bf16 autocast (issue 12: is Dice unchanged?); for GenSeg that covers the
    # segmenter, the GAN steps and the rendering of synthetic pairs (the architecture's hypergradient stays fp32)
    "augment_bf16": ("augment", {"precision": "bf16"}),
    "genseg_aug_fast_bf16": ("genseg_aug", {"gen_every": 2, "arch_every_max": 16, "precision": "bf16"}),
}


def _sharpness(images: list[np.ndarray]) -> float:
    """Mean absolute finite difference along every spatial axis (blurry images score low)."""
    vals = []
    for im in images:
        for ax in range(1, im.ndim):
            vals.append(float(np.abs(np.diff(im, axis=ax)).mean()))
    return float(np.mean(vals))


def fidelity_stage(a: argparse.Namespace) -> Path:
    from segsynth.data.splits import split_cases
    from segsynth.evaluate.fidelity import label_fidelity
    from segsynth.experiments.sweep import load_for_sweep
    from segsynth.generators.genseg import GenSegGenerator, GenSegOptions
    from segsynth.generators.seg_term import SegmentationTerm

    cfg = sweep_config(a)
    data, _, _ = load_for_sweep(cfg)
    split = split_cases(data.cases, n_train=cfg.n_values[0], n_val=cfg.n_val, seed=0, n_test=cfg.n_test)
    train, val, k = split.train, split.val, data.info.num_classes
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    if a.evaluator == "reference":
        evaluator = split_reference(a, cfg, data, split, seed=0)
    else:
        evaluator = SegmentationTerm.trained_on(train, k, weight=1.0, steps=a.eval_steps, seed=12345).model
    real = float(np.mean(label_fidelity(evaluator, val, num_classes=k, device=cpu)))
    real_sharp = _sharpness([c.image for c in train])
    out: dict[str, Any] = {"real_val_fidelity": real, "evaluator_seconds": time.perf_counter() - t0,
                           "real_sharpness": real_sharp, "n_train": len(train), "n_val": len(val), "rows": []}
    logging.info("real validation pairs: fidelity %.3f", real)
    path = _write_fidelity(a, out)
    opts = GenSegOptions.from_dict(cfg.method_options["genseg"])
    checkpoints = sorted(a.gan_steps)
    for w in a.seg_weights:
        gen = GenSegGenerator(**{**opts.generator_kwargs(), "seg_weight": w, "seg_steps": a.seg_steps})
        done, seconds = 0, 0.0
        for total in checkpoints:
            stats = gen.fit(train, seed=0, steps=total - done)
            seconds += stats["seconds"]
            done = total
            pairs = gen.sample(a.n_pairs, generator=torch.Generator().manual_seed(7))
            fid = float(np.mean(label_fidelity(evaluator, pairs, num_classes=k, device=cpu)))
            row = {"seg_weight": w, "gan_steps": total, "fidelity": fid, "fidelity_ratio": fid / real,
                   "sharpness_ratio": _sharpness([p.image for p in pairs]) / real_sharp,
                   "gan_seconds": seconds, "seg_term_seconds": (gen.history.get("seg_term") or {}).get("seconds", 0.0),
                   "final": {kk: v for kk, v in stats.items() if kk.startswith("gan_")}}
            out["rows"].append(row)
            logging.info("seg_weight %s, %d GAN steps: fidelity %.3f (%.0f %% of real), sharpness %.2f, %.0f s",
                         w, total, fid, 100 * fid / real, row["sharpness_ratio"], seconds)
            path = _write_fidelity(a, out)  # after every row: a stopped run keeps what it measured
    return path


def sweep_dir(name: str, tag: str) -> Path:
    """The folder of a task's sweep: ``results/synthesis_pays_<name>[_<tag>]`` (one sub-folder per variant)."""
    return RESULTS / f"synthesis_pays_{name}{'_' + tag if tag else ''}"


def split_reference(a: argparse.Namespace, cfg: Any, data: Any, split: Any, seed: int) -> torch.nn.Module:
    """The ``augment`` reference segmenter of the split of ``seed``, the one the sweep's label fidelity uses (its
    key hashes the split, the training flags and the seed): a saved one is reused, this sweep's variants first,
    then any sweep of this task; otherwise it is trained into this sweep's ``augment/runs/_fidelity_reference``."""
    from segsynth.evaluate.fidelity import reference_dir, reference_segmenter
    from segsynth.experiments.sweep import first_n, run_key
    from segsynth.generators.base import MethodContext

    n = cfg.n_values[0]
    base = sweep_dir(a.name, a.tag)
    ctx = MethodContext(info=data.info, train=first_n(split.train, n), val=split.val, segmenter=cfg.segmenter,
                        segmenter_kwargs=dict(cfg.segmenter_kwargs),
                        train_config=dataclasses.replace(cfg.train, seed=seed), seed=seed, device=torch.device("cpu"),
                        workdir=base / "augment" / "runs" / run_key("augment", n, seed))
    own = reference_dir(ctx)
    reuse = [base / v / "runs" / "_fidelity_reference" / own.name / "model" for v in a.variants]
    reuse += sorted(RESULTS.glob(f"synthesis_pays_{a.name}*/*/runs/_fidelity_reference/{own.name}/model"))
    return reference_segmenter(ctx, own, reuse=reuse)


def _write_fidelity(a: argparse.Namespace, out: dict[str, Any]) -> Path:
    from segsynth.utils.files import write_json

    name = f"{sweep_dir(a.name, a.tag).name}_fidelity"
    path = RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "flags": vars(a), **out})
    _fidelity_plot(out, RESULTS / f"{name}.png", a.name)
    return path


def _fidelity_plot(out: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for w in sorted({r["seg_weight"] for r in out["rows"]}):
        rs = [r for r in out["rows"] if r["seg_weight"] == w]
        axes[0].plot([r["gan_steps"] for r in rs], [r["fidelity"] for r in rs], "o-", label=f"seg_weight {w}")
        axes[1].plot([r["gan_seconds"] for r in rs], [r["sharpness_ratio"] for r in rs], "o-", label=f"seg_weight {w}")
    axes[0].axhline(out["real_val_fidelity"], color="k", ls="--", label="real validation pairs")
    axes[0].set_xlabel("GAN steps")
    axes[0].set_ylabel("label fidelity (evaluator Dice)")
    axes[1].axhline(1.0, color="k", ls="--")
    axes[1].set_xlabel("generator training seconds")
    axes[1].set_ylabel("sharpness, generated / real")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: label fidelity and sharpness of GenSeg pairs (split seed 0, validation only)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chosen_seg_weight(a: argparse.Namespace) -> float:
    """``--seg-weight``, or with "auto" the weight whose pairs were most faithful on the fidelity stage (validation
    only) after as many GAN steps as the sweep pre-trains (else after any), read from ``--fidelity-from``."""
    if a.seg_weight != "auto":
        return float(a.seg_weight)
    path = RESULTS / f"synthesis_pays_{a.fidelity_from or a.name}_fidelity.json"
    rows = json.loads(path.read_text())["rows"]
    at = [r for r in rows if r["gan_steps"] == a.pretrain_steps] or rows
    best = max(at, key=lambda r: r["fidelity"])
    logging.info("seg_weight %s: most faithful pairs in %s (fidelity %.3f)", best["seg_weight"], path.name,
                 best["fidelity"])
    return float(best["seg_weight"])


def sweep_fidelity(a: argparse.Namespace, n_pairs: int = 32) -> dict[str, list[dict[str, Any]]]:
    """Per GenSeg variant and seed: label fidelity of the run's saved generator (derived and re-trained, rendering
    augmented training masks) against the ``augment`` reference segmenter of the same split, and of the real
    validation pairs (``segsynth.evaluate.fidelity``; the reference is trained once per split and kept)."""

    from segsynth.data.splits import split_cases
    from segsynth.evaluate.fidelity import (
        draw_pairs,
        fidelity_summary,
        grid_field,
        label_fidelity,
    )
    from segsynth.experiments.sweep import first_n, load_for_sweep, run_key
    from segsynth.generators.genseg import GeneratedSource, GenSegGenerator

    cfg = sweep_config(argparse.Namespace(**{**vars(a), "methods": ["augment"], "tag": ""}))
    base = sweep_dir(a.name, a.tag)
    data, _, _ = load_for_sweep(cfg)
    n, k, cpu = cfg.n_values[0], data.info.num_classes, torch.device("cpu")
    out: dict[str, list[dict[str, Any]]] = {}
    for seed in range(a.first_seed, a.seeds):
        split = split_cases(data.cases, n_train=n, n_val=cfg.n_val, seed=seed, n_test=cfg.n_test)
        train = first_n(split.train, n)
        reference = None
        for variant in a.variants:
            method = VARIANTS[variant][0]
            folder = base / variant / "runs" / run_key(method, n, seed) / "generator"
            if method in ("none", "augment") or not (folder / "genseg.json").exists():
                continue
            if "extra_masks" in VARIANTS[variant][1]:  # renders more than the real masks: the sweep's own
                continue                               # measurement (record_fidelity) covers its pairs
            if reference is None:  # each variant's sweep trained this split's reference already (same key)
                reference = split_reference(a, cfg, data, split, seed)
            gen = GenSegGenerator.load(folder)
            gen.set_source_masks(train)
            pairs = draw_pairs(GeneratedSource(gen, gen.source), n_pairs, seed=seed)
            syn = label_fidelity(reference, pairs, num_classes=k, device=cpu)
            real = label_fidelity(reference, split.val, num_classes=k, device=cpu)
            out.setdefault(variant, []).append({"seed": seed, **fidelity_summary(syn, real),
                                                **grid_field(train, pairs)})
    return out


#: caches a sweep keeps under ``<out>/runs/`` that other variants of the same task can reuse: the folder name,
#: and the file that marks an entry complete (an entry is keyed by a hash of everything it depends on)
SHARED_CACHES = (("_fidelity_reference", "model/model.json"), ("_learned_transforms", "transforms.json"))


def share_references(variant_dir: Path) -> None:
    """Copy the caches of the sweep's other variants into ``variant_dir``: the saved ``augment`` references of
    label fidelity, and fitted learned transforms. Each variant is its own sweep folder, and a sweep looks for
    them only in its own (the key is a hash of the split, seed and options, so only a matching entry is ever
    used; without this each new variant trained the reference again, about 150 s per seed in 3D, and the 3D
    registration, about 600 s). Files are hard-linked where the file system allows it (entries are never
    rewritten), copied otherwise."""
    import os
    import shutil

    from segsynth.utils.files import atomic_dir

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for cache, marker in SHARED_CACHES:
        mine = variant_dir / "runs" / cache
        for done in sorted(variant_dir.parent.glob(f"*/runs/{cache}/*/{marker}")):
            theirs = done.parents[len(Path(marker).parts)]  # the other variant's <runs>/<cache>
            entry = done.parent  # the folder the marker completes: <key> or <key>/model
            target = mine / entry.relative_to(theirs)
            if theirs != mine and not target.exists():
                with atomic_dir(target) as tmp:  # a stopped copy leaves no half entry
                    shutil.copytree(entry, tmp, dirs_exist_ok=True, copy_function=link_or_copy)


def record_fidelity(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per variant and seed: the label fidelity the sweep itself measured (its records' ``label_fidelity``), for
    variants ``sweep_fidelity`` does not re-measure (those without a saved GenSeg generator: learned, ...)."""
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:  # one row per seed (a run tested on two test sets has two records with the same fidelity)
        fid = r.get("label_fidelity") or {}
        if "synthetic_mean" in fid:
            rows.setdefault(r["method"], {})[r["seed"]] = {
                "seed": r["seed"], **{k: v for k, v in fid.items() if k not in ("scores", "real_val_scores")}}
    return {v: [by_seed[s] for s in sorted(by_seed)] for v, by_seed in sorted(rows.items())}


def merge_fidelity(previous: Path, new: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Fidelity rows of this call plus those an earlier call of the same sweep measured for seeds whose generator
    is gone now (run folders are not kept; a sweep extended by more seeds measures only the new ones)."""
    if not previous.exists():
        return new
    old = json.loads(previous.read_text()).get("config", {}).get("label_fidelity", {}) or {}
    merged = {}
    for v in sorted(set(old) | set(new)):
        rows = {r["seed"]: r for r in old.get(v, [])} | {r["seed"]: r for r in new.get(v, [])}
        merged[v] = [rows[s] for s in sorted(rows)]
    return merged


def sweep_stage(a: argparse.Namespace) -> Path:
    t0 = time.perf_counter()
    seg_weight = chosen_seg_weight(a) if any(VARIANTS[v][1].get("seg_weight", 0) is None for v in a.variants) \
        else None
    records: list[dict[str, Any]] = []
    for variant in a.variants:
        method, extra = VARIANTS[variant]
        extra = {k: (seg_weight if k == "seg_weight" and v is None else v) for k, v in extra.items()}
        if method not in ("none", "augment"):
            extra.update(a.opt)
        precision = extra.pop("precision", a.precision)
        if "seg_weight" in extra:
            extra["seg_steps"] = a.seg_steps
        cfg = sweep_config(argparse.Namespace(**{**vars(a), "methods": [method], "tag": ""}))
        extra = {k: v.format(data=cfg.data) if isinstance(v, str) else v for k, v in extra.items()}
        cfg.out = sweep_dir(a.name, a.tag) / variant
        share_references(cfg.out)
        cfg.report = False
        cfg.train = dataclasses.replace(cfg.train, precision=precision)
        if extra:
            cfg.method_options.setdefault(method, {}).update(extra)
        for r in run_sweep(cfg):  # results.jsonl may hold more splits than this call's (copied in, or run later)
            if r.get("seed") in cfg.seeds:
                records.append({**r, "method": variant})
    out = sweep_dir(a.name, a.tag)
    print_summary(records, out)
    comparisons = []
    for v in a.variants:
        if v != "augment" and "augment" in a.variants:
            comparisons += paired(records, v, "augment")
        # a setting vs the variant without it: a suffix, or the segmentation term inside the name
        suffixes = ("_fast", "_bf16", "_xm", "_su50", "_fm", "_gp", "_ma", "_ae16", "_wf", "_seg", "_lin")
        without = [v.removesuffix(s) for s in suffixes]
        for base in dict.fromkeys([*without, v.replace("_seg_", "_", 1)]):
            if base != v and base in a.variants:
                comparisons += paired(records, v, base)
        if v.endswith("_fm") and "fixmatch" in a.variants:  # a combination against its semi-supervised part
            comparisons += paired(records, v, "fixmatch")
    config = {"flags": vars(a), "variants": {v: VARIANTS[v] for v in a.variants}, "seg_weight": seg_weight,
              "wall_seconds": time.perf_counter() - t0}
    # this call's rows (measured by the sweep, or re-measured from saved GenSeg generators) over an earlier call's,
    # seed by seed (before, an earlier call's rows of a variant replaced all of this call's, new seeds included)
    config["label_fidelity"] = merge_fidelity(RESULTS / f"{out.name}.json",
                                              {**record_fidelity(records), **sweep_fidelity(a)})
    for v, rows in config["label_fidelity"].items():
        print(f"{v}: label fidelity {np.mean([r['synthetic_mean'] for r in rows]):.3f} vs real validation "
              f"{np.mean([r['real_val_mean'] for r in rows]):.3f} (ratio {np.mean([r['ratio'] for r in rows]):.2f}); "
              f"block edges {block_edges(rows)}")
    try:
        from segsynth.experiments.verdict import verdict_sentences

        config["verdict"] = verdict_sentences([r for r in records if r.get("status") == "ok"])
    except ImportError:
        pass
    path = write_summary(out.name, config, records, comparisons)
    dice_plot(records, SimpleNamespace(methods=a.variants, title=f"{a.name}: synthetic pairs vs augment"),
              RESULTS / f"{out.name}_dice.png")
    for c in comparisons:
        print(f"{c['test_set']:20s} {c['method_a']} - {c['method_b']}: {c['mean_diff']:+.4f} "
              f"(Wilcoxon p={c['wilcoxon_p']:.3g}, n={c['n']})")
    return path


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--opt wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--stage", choices=["fidelity", "sweep"], required=True)
    p.add_argument("--variants", default="augment,genseg_aug,genseg_aug_seg",
                   type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--seg-weight", default="auto", help="seg_weight of the *_seg variants (auto: the most "
                   "faithful weight of the fidelity stage)")
    p.add_argument("--fidelity-from", default=None, help="task whose fidelity stage chooses the weight (default: this)")
    p.add_argument("--seg-weights", default="0,1,5", type=lambda s: [float(v) for v in s.split(",")],
                   help="fidelity stage: weights of the segmentation term to compare")
    p.add_argument("--seg-steps", type=int, default=200, help="steps of the segmentation term's own segmenter")
    p.add_argument("--gan-steps", default="200,600", type=lambda s: [int(v) for v in s.split(",")],
                   help="fidelity stage: GAN steps at which fidelity is measured")
    p.add_argument("--evaluator", choices=("term", "reference"), default="term",
                   help="fidelity stage: 'term' = an independent U-Net trained --eval-steps steps; 'reference' = "
                        "the split's augment model the sweep's label fidelity uses (reused when a sweep saved it)")
    p.add_argument("--eval-steps", type=int, default=300, help="fidelity stage: steps of the evaluator U-Net")
    p.add_argument("--n-pairs", type=int, default=32, help="fidelity stage: generated pairs measured")
    # the GenSeg benchmark's flags (same defaults)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="run (and compare) only the splits first-seed .. seeds-1, e.g. a new variant on the "
                        "splits an earlier call ran on this machine")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--segmenter", default="unet")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--ood", action="store_true")
    p.add_argument("--test-data", default=None, metavar="NAME",
                   help="also test on this folder of ../shared/data (another site with the same classes, e.g. "
                        "shenzhen_lungs for jsrt, ph2_skin for isic); measured only, never used to choose settings")
    p.add_argument("--gen-features", type=int, default=None)
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--arch-batch-size", type=int, default=4)
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--arch-every", type=int, default=2)
    p.add_argument("--arch-lr", type=float, default=3e-4)
    p.add_argument("--arch-weight-decay", type=float, default=1e-3)
    p.add_argument("--derive-steps", type=int, default=40)
    p.add_argument("--hypergradient", default="finite_difference")
    p.add_argument("--tag", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="training precision of every variant without its own (the *_bf16 variants: bf16)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of every generator variant, over the variant's own (JSON value, else text); "
                        "e.g. --opt reg_steps=20 for a smoke run (repeatable)")
    return p


def main() -> None:
    a = build_parser().parse_args()
    a.opt = dict(_key_value(o) for o in a.opt)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.methods = []
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    path = fidelity_stage(a) if a.stage == "fidelity" else sweep_stage(a)
    if a.stage == "fidelity":
        print(json.dumps(json.loads(path.read_text())["rows"], indent=1)[:3000])
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
