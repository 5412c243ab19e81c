"""Block edges of a sweep's generated images, re-measured from the generators its runs saved.

A decoder that doubles coarse feature maps by nearest neighbour copies each cell into a block; SPADE at 64²
starts from a 4 × 4 map and can leave 8- and 16-pixel squares that a short fit does not smooth away.
``grid_energy`` (``segsynth.evaluate.quality``) measures them: the mean step between neighbouring pixels across
the lines of a P-pixel grid over the mean step elsewhere, about 1 for real images. Sweeps record it for their new
runs (``label_fidelity.grid_energy``); this script measures it for runs of ``synthesis_pays.py`` from the
generators they saved (``<sweep>/<variant>/runs/<run key>/generator``), on the run's split, for the very pairs the
run trained on (drawn again with the run's seed). It never fits a generator: a run without one is skipped.

    python benchmarks/generator_grid.py kvasir --tag s800spade --variants spade_aug_seg --seeds 3,4,5 --n-test 200

writes ``results/generator_grid_<name>_<tag>.json`` and ``.png`` (grid energy per period, real and each variant).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from genseg_benchmark import sweep_config  # noqa: E402
from synthesis_pays import VARIANTS, build_parser, sweep_dir  # noqa: E402

from segsynth.evaluate.quality import GRID_PERIODS, grid_report  # noqa: E402

log = logging.getLogger("generator_grid")


def measure(a: argparse.Namespace) -> dict[str, Any]:
    from segsynth.data.splits import split_cases
    from segsynth.experiments.sweep import first_n, load_for_sweep, run_key
    from segsynth.generators import get_method
    from segsynth.generators.base import MethodContext

    flags = [a.name, "--stage", "sweep", "--steps", str(a.steps)]
    for flag, value in (("--n-test", a.n_test), ("--n-train", a.n_train), ("--n-val", a.n_val)):
        if value is not None:
            flags += [flag, str(value)]
    sp = build_parser().parse_args(flags)
    sweep = sweep_dir(a.name, a.tag)
    out: dict[str, Any] = {"sweep": sweep.name, "periods": list(GRID_PERIODS), "rows": []}
    data = None
    for variant in a.variants:
        method_name, extra = VARIANTS[variant]
        cfg = sweep_config(argparse.Namespace(**{**vars(sp), "methods": [method_name], "tag": ""}))
        if data is None:
            data, _, _ = load_for_sweep(cfg)
        n = cfg.n_values[0]
        for seed in a.seeds:
            run = sweep / variant / "runs" / run_key(method_name, n, seed)
            if not (run / "generator" / "fit_stats.json").exists():
                log.warning("%s seed %d: no saved generator in %s, skipped", variant, seed, run)
                continue
            split = split_cases(data.cases, n_train=n, n_val=cfg.n_val, seed=seed, n_test=cfg.n_test)
            train = first_n(split.train, n)
            method = get_method(method_name, **{**cfg.method_options.get(method_name, {}), **extra})
            ctx = MethodContext(info=data.info, train=train, val=split.val, segmenter=cfg.segmenter,
                                train_config=dataclasses.replace(cfg.train, seed=seed), seed=seed, workdir=run)
            pairs = method.synthetic_cases(method.fitted_generator(ctx), ctx)
            row = {"variant": variant, "seed": seed, "n_pairs": len(pairs), **grid_report(train, pairs)}
            log.info("%s seed %d: synthetic %s, real %s (periods %s)", variant, seed, row["synthetic"], row["real"],
                     row["periods"])
            out["rows"].append(row)
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    from segsynth.experiments.plots import save_figure

    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    rows = out["rows"]
    if rows:
        periods = rows[0]["periods"]
        series = {"real training images": list({r["seed"]: r["real"] for r in rows}.values())}  # one per split
        for v in dict.fromkeys(r["variant"] for r in rows):
            series[v] = [r["synthetic"] for r in rows if r["variant"] == v]
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series.items()):
            arr = np.asarray(values, dtype=float)
            ax.bar(np.arange(len(periods)) + i * width, arr.mean(0), width, yerr=arr.std(0) if len(arr) > 1 else None,
                   label=f"{label} ({len(arr)} splits)")
        ax.set_xticks(np.arange(len(periods)) + 0.4 - width / 2, [f"{p} px" for p in periods])
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    ax.set_ylabel("grid energy (step across / within)")
    ax.set_title(f"block edges: {out['sweep']}", fontsize=9)
    save_figure(fig, path)


def main() -> None:
    from segsynth.utils.files import write_json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="task of synthesis_pays.py (kvasir, isic, ...)")
    p.add_argument("--tag", required=True, help="the sweep's tag")
    p.add_argument("--variants", required=True, type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--steps", type=int, default=800, help="the sweep's --steps (part of its training config)")
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = measure(a)
    out["flags"] = vars(a)
    name = f"generator_grid_{a.name}_{a.tag}"
    write_json(RESULTS / f"{name}.json", out)
    plot(out, RESULTS / f"{name}.png")
    print(f"summary: {RESULTS / f'{name}.json'}")


if __name__ == "__main__":
    main()
