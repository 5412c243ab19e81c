"""``segsynth demo``: the project's main job at small scale, on the hippocampus sample shipped in the package.

One command shows the whole flow a user runs on their own data:

1. a sweep of ``none``, ``augment`` and ``genseg`` on 1 labelled volume (2D slices, 48x48: the volumes' own in-plane size, about 37x50), one seed: GenSeg
   fits its mask-to-image generator on the labelled slices and trains the segmenter on real + generated pairs;
   every segmenter is tested on the same held-out volumes;
2. ``synthetic_vs_real.png``: generated pairs (image and the mask it was rendered from) beside real ones;
3. label fidelity: does a generated image show what its mask says? A reference segmenter trained on the real
   pairs only (``augment``) segments generated images; its Dice against their masks, beside its Dice on real
   validation slices (``segsynth.evaluate.fidelity``), goes to ``fidelity.json``;
4. the computed verdict (``segsynth.experiments.verdict``): did GenSeg help over ``augment`` and ``none``?
   At the level of the split: with the demo's one split it says that a method effect cannot be told from split
   noise, and gives the case-level test of these two trained models; never a hand-written claim.

Everything lands in ``--out``: ``report.html`` (the sweep report), ``results.jsonl``, the montage,
``fidelity.json`` and ``demo.json`` (what the console printed, in numbers). About 100 s on 2 CPU cores with
AVX-512 (96-116 s measured on an idle AMD EPYC, 2 threads; 191 s at 64x64 and 120 steps before); 64-158 s on 2 cores
with AVX2 only (151-222 s before ``predict_many``), where a training step of its U-Net (48x48, batch 16) takes
250-280 ms (``benchmarks/speed.py --sections loop --sizes 48 --batch 16 --features 16,16,32,64,128,16``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case

log = logging.getLogger(__name__)

# A GenSeg small enough for the demo's budget: a narrow generator, GAN pre-training before the segmenter, one
# GAN update per segmenter step, alpha updated every 4 steps at first and up to every 16 once it settles.
# The mixture (searched) generator the segmenter trained with is saved for the montage; no derivation.
GENSEG_DEMO: dict[str, Any] = {"features": 16, "max_features": 128, "disc_features": 32, "pretrain_steps": 150,
                               "gen_batch_size": 4, "arch_every": 4, "arch_every_max": 16, "arch_batch_size": 4,
                               "derive_steps": 0, "save_generator": False, "save_search": True}
SEGMENTER_FEATURES = (16, 16, 32, 64, 128, 16)


@dataclass
class DemoConfig:
    """What ``segsynth demo`` runs (the defaults are the demo; tests shrink them)."""

    out: Path
    device: str = "auto"
    seed: int = 0
    steps: int = 100                 # segmenter steps per run
    batch_size: int = 16
    lr: float = 3e-3
    n_train: Sequence[int] = (1,)    # labelled volumes
    seeds: Sequence[int] = (0,)      # one seed fits the 2-minute budget; the paired test runs over test volumes
    n_val: int = 2
    n_test: int = 8                  # held-out volumes (every slice of each)
    size: int = 48                   # the sample's slices are about 37x50 voxels: 48x48 loses nothing
    methods: Sequence[str] = ("none", "augment", "genseg")
    genseg: dict[str, Any] = field(default_factory=lambda: dict(GENSEG_DEMO))
    segmenter_kwargs: dict[str, Any] = field(default_factory=lambda: {"features": SEGMENTER_FEATURES})
    sample_predictions: int = 2      # test slices drawn with their prediction, per run (report)
    montage_pairs: int = 6
    fidelity_pairs: int = 64       # generated pairs scored for label fidelity
    data: Path | None = None         # default: the shipped hippocampus sample
    progress: bool = False

    @property
    def generator_method(self) -> str | None:
        """The GenSeg method of the demo (``genseg``, ``genseg_aug``, ...): it gets ``genseg`` options, its
        generator is shown and scored."""
        return next((m for m in self.methods if m.startswith("genseg")), None)


def _say(text: str) -> None:
    print(text, flush=True)


def sweep_config(cfg: DemoConfig):
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path
    from segsynth.experiments.sweep import SweepConfig
    from segsynth.segment.train import TrainConfig

    train = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, val_every=max(1, cfg.steps // 4),
                        seed=cfg.seed, progress=cfg.progress)
    return SweepConfig(data=cfg.data or sample_path(), out=cfg.out, methods=list(cfg.methods),
                       n_values=list(cfg.n_train), seeds=list(cfg.seeds), n_val=cfg.n_val, n_test=cfg.n_test,
                       segmenter="unet", segmenter_kwargs=dict(cfg.segmenter_kwargs),
                       spec=PreprocessSpec(spatial_dims=2, size=cfg.size), train=train,
                       method_options={m: dict(cfg.genseg) for m in cfg.methods if m.startswith("genseg")}, device=cfg.device,
                       sample_predictions=cfg.sample_predictions, fidelity_pairs=cfg.fidelity_pairs,
                       title="segsynth demo: GenSeg vs augment vs none on the shipped hippocampus sample")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run (or resume) the demo; print a few lines of progress and the results; return them as a dict."""
    from segsynth.experiments.sweep import print_summary, run_sweep
    from segsynth.utils.files import write_json

    t0 = time.perf_counter()
    sweep = sweep_config(cfg)
    n_runs = len(sweep.methods) * len(sweep.n_values) * len(sweep.seeds)
    _say(f"segsynth demo: {Path(sweep.data).name} (hippocampus MRI shipped with the package), 2D slices at "
         f"{cfg.size}x{cfg.size}.\n"
         f"  {n_runs} runs: {', '.join(sweep.methods)} x N={','.join(map(str, sweep.n_values))} labelled "
         f"volume(s) x {len(sweep.seeds)} seed{'s' if len(sweep.seeds) != 1 else ''}, {cfg.steps} segmenter "
         f"steps each; GenSeg also fits its "
         f"generator ({cfg.genseg.get('pretrain_steps', 0)} GAN steps first).\n"
         f"  Tested on {cfg.n_test} held-out volumes. Output: {cfg.out}")
    records = run_sweep(sweep)
    result: dict[str, Any] = {"sweep_seconds": time.perf_counter() - t0}
    print_summary(records, cfg.out)

    if cfg.generator_method is not None:
        t1 = time.perf_counter()
        real, val, gen = _real_and_generator(cfg, sweep)
        if gen is not None:
            montage = save_real_vs_synthetic(real, gen, cfg.out / "synthetic_vs_real.png", k=cfg.montage_pairs,
                                             seed=cfg.seed)
            result["montage"] = str(montage)
            _say(f"\nsynthetic pairs beside real ones: {montage}")
            result["label_fidelity"] = _fidelity(cfg, sweep, records, real, val, gen)
            _report_with_montage(sweep, records, montage)
        result["synthesis_seconds"] = time.perf_counter() - t1

    from segsynth.experiments.verdict import verdict_sentences

    result["verdict"] = verdict_sentences(records)  # printed by print_summary, under the Dice table
    result["seconds"] = time.perf_counter() - t0
    write_json(cfg.out / "demo.json", result)
    _say(f"\ndemo finished in {result['seconds']:.0f} s; report: {cfg.out / 'report.html'}")
    return result


# ------------------------------------------------------------------------------------------ generator


def _real_and_generator(cfg: DemoConfig, sweep) -> tuple[list[Case], list[Case], Any]:
    """The real training and validation slices of the first (N, seed), and the generator GenSeg trained there."""
    from segsynth.data.splits import split_cases
    from segsynth.experiments.sweep import first_n, load_for_sweep, run_key
    from segsynth.generators.genseg import GenSegGenerator
    from segsynth.utils.device import resolve_device

    n, seed = min(sweep.n_values), sweep.seeds[0]
    run_dir = Path(cfg.out) / "runs" / run_key(cfg.generator_method, n, seed)
    folder = next((run_dir / d for d in ("generator_search", "generator") if (run_dir / d).exists()), None)
    if folder is None:
        log.warning("demo: no saved GenSeg generator in %s: no montage or label fidelity", run_dir)
        return [], [], None
    data, _, _ = load_for_sweep(dataclasses.replace(sweep))
    split = split_cases(data.cases, n_train=max(sweep.n_values), n_val=sweep.n_val, seed=seed, n_test=sweep.n_test)
    real = [c for c in first_n(split.train, n) if c.mask is not None]
    gen = GenSegGenerator.load(folder, resolve_device(cfg.device))
    gen.set_source_masks(real)
    return real, list(split.val), gen


def save_real_vs_synthetic(real: Sequence[Case], gen: Any, path: str | Path, *, k: int = 6, seed: int = 0) -> Path:
    """PNG: k real training pairs (top two rows: image, mask) and k generated pairs (bottom two rows)."""
    from matplotlib.figure import Figure

    from segsynth.evaluate.fidelity import _display
    from segsynth.experiments.plots import save_figure

    shown = sorted(real, key=lambda c: -int((c.mask > 0).sum()))[: max(1, k)]  # slices that show the structure
    k = len(shown)
    drawn = gen.sample(3 * k, generator=torch.Generator().manual_seed(int(seed)))  # augmented masks can crop the
    synthetic = sorted(drawn, key=lambda c: -int((c.mask > 0).sum()))[:k]          # structure away: show the fullest
    kmax = max(1, int(max(int(c.mask.max()) for c in [*shown, *synthetic])))
    fig = Figure(figsize=(1.5 * k, 6.4))
    axes = fig.subplots(4, k, squeeze=False)
    rows = [(shown, "image", "real"), (shown, "mask", "real"), (synthetic, "image", "GenSeg"),
            (synthetic, "mask", "GenSeg")]
    for r, (cases, what, who) in enumerate(rows):
        for j, c in enumerate(cases):
            ax = axes[r][j]
            if what == "image":
                img = _display(np.asarray(c.image))
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            else:
                ax.imshow(np.asarray(c.mask), cmap="viridis", vmin=0, vmax=kmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{who} {what}", fontsize=8)
    fig.suptitle("real training pairs (top) and GenSeg pairs rendered from augmented masks (bottom)", fontsize=9)
    return save_figure(fig, path, dpi=90)


def _report_with_montage(sweep, records: Sequence[dict[str, Any]], montage: Path) -> None:
    """Write the sweep's report again with the montage first among its pictures."""
    from segsynth.experiments.report import write_report

    out = Path(sweep.out)
    pictures: dict[str, str | Path] = {"GenSeg: generated pairs beside real ones": montage}
    pictures.update({p.stem: p for p in sorted((out / "samples").glob("*.png"))})
    write_report(records, out, title=sweep.title, baseline="none", sample_images=pictures)


# ------------------------------------------------------------------------------------------ fidelity


def _fidelity(cfg: DemoConfig, sweep, records: Sequence[dict[str, Any]], real: Sequence[Case],
              val: Sequence[Case], gen: Any) -> dict[str, Any]:
    """Label fidelity of GenSeg's pairs: from the sweep's records when it measured it, else measured here."""
    from segsynth.evaluate.fidelity import (
        fidelity_advice,
        fidelity_summary,
        format_fidelity,
        label_fidelity,
        reference_segmenter,
    )
    from segsynth.generators.base import MethodContext
    from segsynth.utils.device import resolve_device
    from segsynth.utils.files import write_json

    n, seed = min(sweep.n_values), sweep.seeds[0]
    rec = next((r for r in records if r.get("method") == cfg.generator_method and r.get("n_train") == n
                and r.get("seed") == seed and "synthetic_mean" in (r.get("label_fidelity") or {})), None)
    if rec is not None:
        summary = {k: v for k, v in rec["label_fidelity"].items() if k not in ("scores", "real_val_scores")}
    else:
        device = resolve_device(cfg.device)
        data_info = gen.info
        ctx = MethodContext(info=data_info, train=list(real), val=list(val), segmenter=sweep.segmenter,
                            segmenter_kwargs=dict(sweep.segmenter_kwargs),
                            train_config=dataclasses.replace(sweep.train, seed=seed, progress=False), seed=seed,
                            device=device)
        reference = reference_segmenter(ctx, Path(cfg.out) / "runs" / "fidelity_reference")
        pairs = gen.sample(cfg.fidelity_pairs, generator=torch.Generator().manual_seed(seed + 1))
        k = data_info.num_classes
        syn = label_fidelity(reference, pairs, num_classes=k, device=device)
        yard = label_fidelity(reference, ctx.val, num_classes=k, device=device)
        summary = {**fidelity_summary(syn, yard), "reference": "augment"}
        write_json(Path(cfg.out) / "fidelity.json", {**summary, "scores": [round(s, 4) for s in syn],
                                                      "real_val_scores": [round(s, 4) for s in yard]})
    _say(format_fidelity(summary))
    advice = fidelity_advice(summary, cfg.generator_method or "genseg")
    if advice:
        _say(f"  -> {advice}")
    return summary


__all__ = ["GENSEG_DEMO", "DemoConfig", "run_demo", "save_real_vs_synthetic", "sweep_config"]
