"""Where GenSeg's time goes, and what the cheaper paths save (issue 12): GenSeg ÷ a plain run, 2D and 3D.

    flock /tmp/segsynth_heavy.lock .venv/bin/python benchmarks/genseg_speed.py --dims 2,3   # about 3 min, 1 thread

Measures CPU seconds (``time.process_time``, the minimum of ``--repeats``, fused and unfused interleaved: the
least disturbed by other jobs on the machine) of each piece of a GenSeg run on the shipped hippocampus sample (2D slices at 64², or 3D
volumes cropped to 32×48×32), with the generator's searchable cells evaluated op by op ("unfused", as before)
and as one convolution with the mixed kernel ("fused", exact; ``segsynth.nets.pix2pix.fused_mixture``):

* ``segmenter_step``: one plain training step (the unit: a plain run is ``steps`` of these);
* ``generate_half_batch``: rendering the generated half of a segmenter batch (stage II);
* ``gan_step``: one Pix2Pix update of the generator weights (stage I; also pre-training and derivation);
* ``arch_step``: one architecture update (stage III, finite-difference hypergradient).

From these it estimates seconds per run and the ratio GenSeg ÷ plain for several settings: as before
(unfused), fused, fused + the adaptive architecture schedule (``arch_every_max``; assumes alpha settled from the
start, which the measured moves of softmax(alpha), ~1e-4 per update with weight decay 1e-3, satisfy), and with
one GAN update every 2 steps (``gen_every=2``). Writes ``benchmarks/results/genseg_speed.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import RESULTS, UNET_FEATURES, genseg_step_pieces, machine  # noqa: E402
from segsynth.utils.files import write_json  # noqa: E402

SETTINGS = {  # name: (fused cells, arch_every, arch_every_max, gen_every)
    "before (op by op)": (False, 2, 0, 1),
    "fused (exact)": (True, 2, 0, 1),
    "fused + adaptive alpha (max 16)": (True, 2, 16, 1),
    "fused + adaptive alpha + gen_every 2": (True, 2, 16, 2),
}
RUNS = {  # name: (segmenter steps, GAN pre-training steps, derivation steps)
    "benchmark run (300 steps, 200 pre-training, 40 derivation)": (300, 200, 40),
    "defaults (500 steps, 300 pre-training, 200 derivation)": (500, 300, 200),
}


def arch_updates(steps: int, every: int, every_max: int) -> int:
    """Architecture updates in ``steps`` steps: fixed ``every``, or doubling up to ``every_max`` (settled alpha)."""
    if every_max <= every:
        return steps // every
    n, t, interval = 0, every, every
    while t <= steps:
        n += 1
        interval = min(2 * interval, every_max)
        t += interval
    return n


def pieces(dims: int, repeats: int) -> dict[str, dict[str, float]]:
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path
    from segsynth.data.splits import split_cases
    from segsynth.generators.genseg import GenSegOptions
    from segsynth.nets.segmenters import build_segmenter

    if dims == 2:
        spec, seg_kw, width, batch = PreprocessSpec(spatial_dims=2, size=64), UNET_FEATURES[2], 16, 8
    else:
        spec, seg_kw, width, batch = (PreprocessSpec(spatial_dims=3, size=None, shape_3d=(32, 48, 32)),
                                      UNET_FEATURES[3], 8, 2)
    data = load_dataset(sample_path(), spec, progress=False)
    split = split_cases(data.cases, 2, 2, seed=0)
    k = data.info.num_classes
    opts = GenSegOptions(features=width, max_features=8 * width, disc_features=2 * width)
    seg = build_segmenter("unet", dims, data.info.in_channels, k, features=seg_kw)
    gen, fns = genseg_step_pieces(split.train, split.val, k, opts, seg, batch, 3e-3, max(1, batch // 2))
    times: dict[str, dict[str, list[float]]] = {"unfused": {}, "fused": {}}
    for name, fn in fns.items():  # the two modes interleaved, so that drift in the machine's load hits both
        for mode in ("unfused", "fused"):
            gen.net.set_fused(mode == "fused")
            fn()  # warm-up
        for _ in range(repeats):
            for mode in ("unfused", "fused"):
                gen.net.set_fused(mode == "fused")
                t0 = time.process_time()
                fn()
                times[mode].setdefault(name, []).append(time.process_time() - t0)
    out = {mode: {name: float(np.min(v)) for name, v in d.items()} for mode, d in times.items()}
    out["fused"]["segmenter_step"] = out["unfused"]["segmenter_step"] = min(
        out["fused"]["segmenter_step"], out["unfused"]["segmenter_step"])  # no generator in it
    return out


def estimates(p: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for run, (steps, pre, der) in RUNS.items():
        plain = steps * p["unfused"]["segmenter_step"]
        rows = {}
        for name, (fused, every, every_max, gen_every) in SETTINGS.items():
            c = p["fused" if fused else "unfused"]
            n_arch = arch_updates(steps, every, every_max)
            sec = ((pre + der + steps // gen_every) * c["gan_step"] + steps * (c["segmenter_step"]
                   + c["generate_half_batch"]) + n_arch * c["arch_step"])
            loop = (c["segmenter_step"] + c["generate_half_batch"] + c["gan_step"] / gen_every
                    + c["arch_step"] * n_arch / steps)  # per segmenter step, pre-training and derivation aside
            rows[name] = {"seconds": sec, "ratio_to_plain": sec / plain, "arch_updates": n_arch,
                          "per_step_ratio": loop / p["unfused"]["segmenter_step"],
                          "exact": name in ("before (op by op)", "fused (exact)")}
        out[run] = {"plain_seconds": plain, "settings": rows}
    return out


def plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(results)
    run = next(iter(RUNS))
    fig, axes = plt.subplots(1, len(dims), figsize=(6 * len(dims), 4), squeeze=False)
    for ax, d in zip(axes[0], dims):
        rows = results[d]["estimates"][run]["settings"]
        names = list(rows)
        ax.barh(range(len(names)), [rows[n]["ratio_to_plain"] for n in names], color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        target = 2.5 if d == "2d" else 4.0
        ax.axvline(target, color="tab:red", ls="--", label=f"target ≤ {target}×")
        ax.set_xlabel("GenSeg run ÷ plain run (CPU seconds, estimated from measured pieces)")
        ax.set_title(f"{d}: {run}", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="2,3")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=RESULTS / "genseg_speed.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results: dict[str, Any] = {}
    for d in (int(v) for v in a.dims.split(",")):
        measured = pieces(d, a.repeats)
        results[f"{d}d"] = {"cpu_seconds": measured, "estimates": estimates(measured)}
        for run, est in results[f"{d}d"]["estimates"].items():
            for name, row in est["settings"].items():
                print(f"{d}D {run[:14]:14s} {name:40s} {row['ratio_to_plain']:.2f}x plain "
                      f"({row['per_step_ratio']:.2f}x per step)")
    write_json(a.json, {"benchmark": "genseg_speed", "machine": machine(), "threads": a.threads,
                        "repeats": a.repeats, "results": results})
    plot(a.json.with_suffix(".png"), results)
    print(f"wrote {a.json} and {a.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
