"""Baseline learning curves (issue 2): `none` vs classical `augment` on real data, several seeds.

    python benchmarks/baselines.py jsrt        # 2D chest X-ray lungs, N = 1,2,4,8,16, 3 seeds, 64 px
    python benchmarks/baselines.py hippo2d     # hippocampus 2D slices, N = 1,2,4,8 volumes
    python benchmarks/baselines.py hippo3d     # hippocampus 3D volumes, N = 1,2,4,8
    python benchmarks/baselines.py jsrt-shift  # JSRT train, test also on an intensity-shifted JSRT copy

Each writes the sweep (results.jsonl, report.html, PNG curves) under benchmarks/results/<name>/ and a
summary JSON benchmarks/results/<name>.json (Dice/HD95 mean ± sd, seconds per run, peak memory, paired
tests augment vs none). Sizes are set for 2 CPU cores; pass --steps/--size to scale up on a GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, UNET_FEATURES, paired, shared, write_summary  # noqa: E402

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, print_summary, run_sweep  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402

SMALL_UNET = UNET_FEATURES[2]


def shifted_copy(src: Path, dst: Path, n: int = 60, seed: int = 0) -> Path:
    """A second 'lung domain': JSRT images not used for training with another scanner's look (gamma, blur,
    contrast, noise). There is no second lung dataset in ../shared; this is a stand-in, kept out of git."""
    from PIL import Image, ImageFilter

    if (dst / "images").is_dir() and len(list((dst / "images").glob("*.png"))) == n:
        return dst
    rng = np.random.default_rng(seed)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (src / "images").glob("*.png"))[-n:]
    for name in names:
        img = np.asarray(Image.open(src / "images" / name).convert("L")).astype(np.float32) / 255
        img = np.clip(img, 0, 1) ** 0.6  # brighter, flatter
        img = 0.15 + 0.7 * img + rng.normal(0, 0.04, img.shape)
        out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
        out.save(dst / "images" / name)
        Image.open(src / "masks" / name).save(dst / "masks" / name)
    return dst


def config(name: str, a: argparse.Namespace) -> SweepConfig:
    out = RESULTS / name
    train = TrainConfig(steps=a.steps, batch_size=8, lr=3e-3, val_every=max(1, a.steps // 8), progress=False)
    if name in ("jsrt", "jsrt-shift"):
        test_data = shifted_copy(shared("jsrt_lungs"), RESULTS / "_jsrt_shifted_data") if name == "jsrt-shift" else None
        n_values = [1, 2, 4, 8, 16] if name == "jsrt" else [1, 4, 16]
        return SweepConfig(data=shared("jsrt_lungs"), out=out, methods=["none", "augment"], n_values=n_values,
                           seeds=list(range(a.seeds)), test_data=test_data, n_val=2,
                           n_test=60 if name == "jsrt-shift" else None,
                           segmenter_kwargs={"features": SMALL_UNET}, spec=PreprocessSpec(size=a.size or 64),
                           train=train, device=a.device, title=f"Baselines on JSRT lungs ({name})")
    if name == "hippo2d":
        return SweepConfig(data=shared("hippocampus"), out=out, methods=["none", "augment"], n_values=[1, 2, 4, 8],
                           seeds=list(range(a.seeds)), n_val=2, n_test=40,
                           segmenter_kwargs={"features": SMALL_UNET},
                           spec=PreprocessSpec(spatial_dims=2, size=a.size or 64), train=train, device=a.device,
                           title="Baselines on hippocampus, 2D axial slices")
    if name == "hippo3d":
        train = TrainConfig(steps=a.steps, batch_size=2, lr=3e-3, val_every=max(1, a.steps // 6), progress=False)
        return SweepConfig(data=shared("hippocampus"), out=out, methods=["none", "augment"], n_values=[1, 2, 4, 8],
                           seeds=list(range(a.seeds)), n_val=2, n_test=30,
                           segmenter_kwargs={"features": UNET_FEATURES[3]},
                           spec=PreprocessSpec(shape_3d=(40, 56, 40)), train=train, device=a.device,
                           title="Baselines on hippocampus, 3D volumes")
    raise SystemExit(f"unknown benchmark {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=["jsrt", "hippo2d", "hippo3d", "jsrt-shift"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = config(a.name, a)
    records = run_sweep(cfg)
    print_summary(records, cfg.out)
    cfg_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    path = write_summary(a.name, cfg_json, records, paired(records, "augment", "none"))
    print(f"summary: {path}")


if __name__ == "__main__":
    main()
