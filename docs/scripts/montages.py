"""Montages of each method family's synthetic pairs for the docs site (docs/assets/montages/*.png).

Runs the real methods at tiny scale on CPU, on the hippocampus sample shipped inside the package (MSD
Hippocampus, CC-BY-SA 4.0: see segsynth/data/sample/ATTRIBUTION.md), as 2D slices at 48x48 like `segsynth
demo`: one labelled volume (split seed 0), its slices the training pairs, the split's unused volumes the
unlabelled images. Each method is fitted for a minute or two (far below its defaults), so the pictures show
what each method makes, not how good it gets with a full budget.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python docs/scripts/montages.py [--only genseg,spade,...]

Writes docs/assets/montages/<method>.png and docs/assets/montages/montages.json (options used and seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "assets" / "montages"
K = 6  # pairs shown per row

# tiny fits: each method's options for the montage (every other option at its default)
TINY: dict[str, dict] = {
    "augment": {},
    "randaug": {},
    "domain_rand": {},
    "genseg": {"features": 16, "max_features": 128, "disc_features": 32, "pretrain_steps": 900,
               "gen_batch_size": 4, "arch_every": 4, "arch_every_max": 16, "arch_batch_size": 4,
               "derive_steps": 0, "save_generator": False},
    "spade": {"spade_steps": 400, "classifier_steps": 50, "n_synthetic": 3 * K, "progress": False,
              "reuse": False},
    "brainspade": {"ae_steps": 300, "ldm_steps": 600, "spade_steps": 400, "classifier_steps": 50,
                   "n_synthetic": 3 * K, "sampling_steps": 25, "progress": False, "reuse": False},
    "learned": {"reg_steps": 200, "app_steps": 200, "max_unlabelled": 60, "cache": False},
}
SEGMENTER_STEPS = 60  # GenSeg trains its generator beside a segmenter: this many segmenter steps


def _context(method: str):
    from segsynth.data.case import Case
    from segsynth.data.splits import split_cases
    from segsynth.experiments.demo import DemoConfig, sweep_config
    from segsynth.experiments.sweep import first_n, load_for_sweep
    from segsynth.generators.base import MethodContext
    from segsynth.segment.train import TrainConfig

    sweep = sweep_config(DemoConfig(out=Path("/tmp/segsynth-montages")))
    data, _, _ = load_for_sweep(sweep)
    split = split_cases(data.cases, n_train=1, n_val=2, seed=0, n_test=8)
    train = [c for c in first_n(split.train, 1) if c.mask is not None]
    if method == "learned":  # the atlas is the first labelled case: in 2D, the slice showing most hippocampus
        train.sort(key=lambda c: -int((c.mask > 0).sum()))
    unlabelled = [Case(c.case_id, c.image, None, dict(c.meta)) for c in split.pool]
    cfg = TrainConfig(steps=SEGMENTER_STEPS, batch_size=16, lr=3e-3, val_every=SEGMENTER_STEPS // 2, seed=0,
                      progress=False, prefetch=0)
    ctx = MethodContext(info=data.info, train=train, val=list(split.val), unlabelled=unlabelled,
                        segmenter="unet", segmenter_kwargs=dict(sweep.segmenter_kwargs), train_config=cfg, seed=0,
                        device=torch.device("cpu"), options=dict(TINY[method]))
    return ctx


def _pairs(method: str, ctx) -> tuple[np.ndarray, np.ndarray]:
    """3K pairs from the method's own stream: its synthetic pairs (the classical baselines: their training
    stream, i.e. augmented real pairs)."""
    from segsynth.generators import get_method

    m = get_method(method, **TINY[method])
    if method == "genseg":
        m.run(ctx)  # the generator is trained with the segmenter (stages I-III)
    source = m.training_source(ctx) if method in ("augment", "randaug") else m.synthetic_source(ctx)
    if source is None:
        raise RuntimeError(f"{method} gave no synthetic stream")
    x, y = source.draw(3 * K, torch.Generator().manual_seed(1))
    return x.numpy(), y.numpy()


def _show(img: np.ndarray) -> np.ndarray:
    a = img[0] if img.ndim == 3 else img
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def save_montage(method: str, real: list, x: np.ndarray, y: np.ndarray, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    order = np.argsort([-(m > 0).sum() for m in y])[:K]  # the fullest masks: augmentation can crop the structure
    shown = sorted(real, key=lambda c: -int((c.mask > 0).sum()))[:K]
    kmax = max(1, int(max(max(int(c.mask.max()) for c in shown), int(y.max()))))
    fig = Figure(figsize=(1.3 * K, 5.6))
    axes = fig.subplots(4, K, squeeze=False)
    rows = [([c.image for c in shown], "real image"), ([c.mask for c in shown], "real mask"),
            ([x[i] for i in order], f"{method} image"), ([y[i] for i in order], f"{method} mask")]
    for r, (items, label) in enumerate(rows):
        for j, a in enumerate(items):
            ax = axes[r][j]
            if r % 2 == 0:
                ax.imshow(_show(np.asarray(a)), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.asarray(a), cmap="viridis", vmin=0, vmax=kmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    return path


TITLES = {
    "augment": "augment: real pairs with classical augmentation (training stream)",
    "randaug": "randaug: random smooth deformation + intensity scaling (training stream)",
    "domain_rand": "domain_rand: SynthSeg-style images drawn from the label maps",
    "genseg": "genseg: searchable Pix2Pix pairs from augmented masks",
    "spade": "spade: SPADE images painted on augmented training masks",
    "brainspade": "brainspade: diffusion label maps + SPADE images",
    "learned": "learned: learned spatial + appearance transforms of one atlas",
}


def write_table(done: dict) -> Path:
    """docs/_snippets/montage_table.md: each montage's options and seconds (included by docs/methods/index.md)."""
    rows = ["| method | options of the tiny fit (the rest at their defaults) | wall seconds (1 thread, `nice 19` beside a running benchmark) |", "|---|---|---|"]
    for method in sorted(done):
        opts = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in done[method]["options"].items()) or "none (no fit)"
        if done[method].get("segmenter_steps"):
            opts += f"; {done[method]['segmenter_steps']} segmenter steps beside the generator"
        rows.append(f"| `{method}` | {opts} | {done[method]['seconds']:.0f} |")
    path = ROOT / "docs" / "_snippets" / "montage_table.md"
    path.write_text("\n".join(rows) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(TINY), help="comma-separated methods (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    log_path = OUT / "montages.json"
    for method in args.only.split(","):
        t0 = time.perf_counter()
        ctx = _context(method)
        x, y = _pairs(method, ctx)
        path = save_montage(method, ctx.train, x, y, OUT / f"{method}.png", TITLES[method])
        seconds = time.perf_counter() - t0
        done = json.loads(log_path.read_text()) if log_path.exists() else {}
        done[method] = {"options": TINY[method], "seconds": round(seconds, 1),
                        "segmenter_steps": SEGMENTER_STEPS if method == "genseg" else 0}
        log_path.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
        write_table(done)
        print(f"{method}: {path.relative_to(ROOT)} in {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
