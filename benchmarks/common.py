"""Helpers shared by benchmark scripts: where the real data is, and a JSON + PNG summary of a sweep."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"

#: the small U-Net of the benchmarks' sweeps, per spatial dimension
UNET_FEATURES = {2: (16, 16, 32, 64, 128, 16), 3: (8, 8, 16, 32, 64, 8)}


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        sys.exit(f"benchmark needs {path} (set SEGSYNTH_SHARED_DATA to the folder holding the datasets)")
    return path


def parse_sampler_spec(spec: str, precision: str | None = None) -> tuple[str, int | None, str | None]:
    """A brainSPADE sampler spec -> (sampler, steps, precision): ``ddim50`` -> ("ddim", 50, precision),
    ``dpm10@bf16`` -> ("dpm", 10, "bf16"), ``ddpm1000`` / ``ddpm`` -> ("ddpm", None, precision) (all its steps)."""
    kind, _, prec = spec.partition("@")
    sampler = next((s for s in ("ddpm", "ddim", "dpm") if kind.startswith(s)), None)
    if sampler is None:
        raise SystemExit(f"sampler spec {spec!r}: expected ddim<N>, dpm<N> or ddpm, optionally @fp32/@bf16")
    steps = int(kind[len(sampler):]) if sampler != "ddpm" and kind[len(sampler):] else None
    return sampler, steps, prec or precision


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_end": os.getloadavg()}


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (test set, method, N): mean ± sd over seeds of Dice, HD95, seconds, peak memory."""
    from segsynth.evaluate.stats import ci95, mean_sd

    out = []
    keys = sorted({(r["test_set"], r["method"], r["n_train"]) for r in records if r.get("status") == "ok"})
    for test_set, method, n in keys:
        rs = [r for r in records if r.get("status") == "ok" and (r["test_set"], r["method"], r["n_train"]) ==
              (test_set, method, n)]
        d_m, d_sd = mean_sd([r["dice_mean"] for r in rs])
        h_m, h_sd = mean_sd([r["hd95_mean"] for r in rs if r.get("hd95_mean") is not None])
        lo, hi = ci95([r["dice_mean"] for r in rs])
        out.append({"test_set": test_set, "method": method, "n_train": n, "seeds": len(rs),
                    "dice_mean": d_m, "dice_sd": d_sd, "dice_ci95": [lo, hi], "hd95_mean": h_m, "hd95_sd": h_sd,
                    "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
                    "peak_memory_mb": float(np.max([r["peak_memory_mb"] for r in rs]))})
    return out


def paired(records: list[dict[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    """Paired tests of method a vs b per (test set, N), pairing on (seed, case)."""
    from segsynth.evaluate.stats import compare_methods

    out = []
    for test_set in sorted({r["test_set"] for r in records}):
        rs = [r for r in records if r["test_set"] == test_set]
        for n in sorted({r["n_train"] for r in rs}):
            res = compare_methods(rs, a, b, n_train=n)
            out.append({"test_set": test_set, **res})
    return out


def write_summary(name: str, config: dict[str, Any], records: list[dict[str, Any]],
                  comparisons: list[dict[str, Any]]) -> Path:
    from segsynth.utils.files import write_json

    path = RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "config": config, "machine": machine(), "summary": summarise(records),
                      "comparisons": comparisons})
    return path


def genseg_step_pieces(train: list[Any], val: list[Any], num_classes: int, opts: Any, seg: torch.nn.Module,
                       batch: int, lr: float, n_generated: int) -> tuple[Any, dict[str, Any]]:
    """The pieces of one GenSeg step as callables, for timing them one by one: a segmenter step on real pairs,
    generating ``n_generated`` pairs, a GAN step and an architecture step. Returns (generator, pieces)."""
    from segsynth.generators.genseg import GanTrainer, GeneratedSource, GenSegGenerator, GenSegHook
    from segsynth.segment.losses import dice_ce_loss
    from segsynth.segment.sources import CaseSource

    gen = GenSegGenerator(**opts.generator_kwargs())
    gen.build_for(train, num_classes, seed=0)
    gen.set_source_masks(train)
    real = CaseSource(train, num_classes=num_classes)
    opt = torch.optim.AdamW(seg.parameters(), lr=lr)
    gan = GanTrainer(gen)
    synth = GeneratedSource(gen, gen.source)
    hook = GenSegHook(gen, real, gen.source, CaseSource(val, num_classes=num_classes), opts)
    g = torch.Generator().manual_seed(0)

    def seg_step() -> None:
        x, y = real.draw(batch, g)
        loss = dice_ce_loss(seg(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return gen, {"segmenter_step": seg_step,
                 "generate_half_batch": lambda: synth.draw(n_generated, g),
                 "gan_step": lambda: gan.step(*real.draw(opts.gen_batch_size, g), g),
                 "arch_step": lambda: hook.arch_step(seg, lr, torch.device("cpu"))}
