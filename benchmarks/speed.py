"""Speed of the training loop: segsynth's loop vs a plain PyTorch/MONAI loop, fp32 vs bf16, data waits.

    flock /tmp/segsynth_heavy.lock .venv/bin/python benchmarks/speed.py            # CPU, about 3 min
    .venv/bin/python benchmarks/speed.py --device cuda --precision bf16 --sizes 128,256 --batch 16 --steps 30
    .venv/bin/python benchmarks/speed.py --sections demo --demo                      # + `segsynth demo` seconds

Writes ``benchmarks/results/speed/speed_<device>.json`` (or ``--json``) and a PNG beside it. The JSON has one
entry per *section* under ``"sections"``; a run updates only the sections it ran and keeps the others, so
each speed question is one function plus one line in ``SECTIONS`` (GenSeg ÷ plain, pairs/s per sampler, ...):

    def section_genseg(a: argparse.Namespace, data: Data) -> dict: ...   # measure, return JSON-able results
    def plot_genseg(ax, result: dict) -> None: ...                       # optional: one panel of the PNG
    SECTIONS["genseg"] = Section(section_genseg, plot_genseg, default=False)

Sections here:

* ``loop``: ms per step (median of the timed steps, after warm-up) of the same BasicUNet on the same
  batches (shipped hippocampus sample, 2D slices, classical ``combined`` augmentation) in
  (1) a plain loop on one batch drawn beforehand (compute only), (2) a plain loop drawing each batch inline,
  (3) ``train_segmenter`` drawing on the training thread (``prefetch=0``) and (4) ``train_segmenter`` with
  its prefetch thread (the default). ``ratio`` = (4) ÷ (2): what segsynth's loop costs beyond a plain loop
  with the same data (target ≤ 1.05). Variants run interleaved, ``--rounds`` times, to spread out drift;
  ``cpu_ratio`` is the same ratio of process CPU time per step (all threads), which other processes on a
  shared machine disturb far less than wall time.
  Each also records the share of step time spent waiting for data.
* ``precision``: ``train_segmenter`` ms per step in fp32 and in bf16 autocast. On a CPU without native bf16
  (AVX2 only) bf16 is emulated and about 20x slower, so only ``--bf16-steps`` steps run there.
* ``precision3d`` (opt-in): the same for the 3D U-Net of the hippocampus benchmarks (40×56×40, batch 2).
* ``demo``: wall seconds of ``segsynth demo`` (only with ``--demo``; minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# as the CLI does: idle OpenMP threads sleep instead of spinning (read once, when torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.common import RESULTS, UNET_FEATURES, machine  # noqa: E402
from segsynth.data.case import Case  # noqa: E402
from segsynth.data.transforms import classical_augmentation  # noqa: E402
from segsynth.nets.segmenters import build_segmenter  # noqa: E402
from segsynth.segment.losses import dice_ce_loss  # noqa: E402
from segsynth.segment.sources import CaseSource  # noqa: E402
from segsynth.segment.train import TrainConfig, train_segmenter  # noqa: E402
from segsynth.utils.device import resolve_device  # noqa: E402
from segsynth.utils.files import write_json  # noqa: E402
from segsynth.utils.precision import autocast, cpu_has_fast_bf16, describe_precision, resolve_precision  # noqa: E402
from segsynth.utils.seed import torch_generator  # noqa: E402

OUT = RESULTS / "speed"


@dataclasses.dataclass
class Data:
    """Labelled 2D cases per working size, loaded once and shared by the sections."""

    cases: dict[int, list[Case]]
    num_classes: int


@dataclasses.dataclass
class Section:
    run: Callable[[argparse.Namespace, Data], dict[str, Any]]
    plot: Callable[[Any, dict[str, Any]], None] | None = None
    default: bool = True  # run when --sections is not given
    needs_data: bool = True  # reads the labelled 2D cases (``Data``)


# ------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Training hook: the time at the end of every step (after the update)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.cpu = device, [time.perf_counter()], [time.process_time()]

    def after_step(self, state: Any) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())


def _ms_per_step(times: list[float], warmup: int) -> float:
    """Median step time in ms, leaving out the first ``warmup`` steps."""
    steps = [b - a for a, b in zip(times[:-1], times[1:])][warmup:]
    return 1000.0 * statistics.median(steps)


def _model(a: argparse.Namespace, num_classes: int, device: torch.device, dims: int = 2,
           features: tuple[int, ...] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenter("unet", dims, 1, num_classes, features=tuple(features or a.features)).to(device)


def _source(cases: list[Case], num_classes: int, dims: int = 2) -> CaseSource:
    return CaseSource(cases, transform=classical_augmentation("combined", dims), num_classes=num_classes)


def plain_loop(a: argparse.Namespace, cases: list[Case], num_classes: int, device: torch.device,
               dtype: torch.dtype | None, inline_data: bool) -> dict[str, float]:
    """The loop anyone would write: draw, forward under autocast, DiceCE, backward, AdamW; nothing else."""
    model = _model(a, num_classes, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    src, gen = _source(cases, num_classes), torch_generator(0)
    fixed = src.draw(a.batch, gen)
    times, cpu, wait = [time.perf_counter()], [time.process_time()], 0.0
    for _ in range(a.warmup + a.steps):
        t = time.perf_counter()
        x, y = src.draw(a.batch, gen) if inline_data else fixed
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        wait += time.perf_counter() - t
        with autocast(device, dtype):
            logits = model(x)
        loss = dice_ce_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # a loop logs its loss
        _sync(device)
        times.append(time.perf_counter())
        cpu.append(time.process_time())
    total = times[-1] - times[0]
    return {"ms_per_step": _ms_per_step(times, a.warmup), "cpu_ms_per_step": _ms_per_step(cpu, a.warmup),
            "data_wait_fraction": wait / total}


def segsynth_loop(a: argparse.Namespace, cases: list[Case], num_classes: int, device: torch.device,
                  precision: str, prefetch: int, steps: int | None = None, warmup: int | None = None,
                  dims: int = 2, batch: int | None = None, features: tuple[int, ...] | None = None
                  ) -> dict[str, float]:
    """``train_segmenter`` on the same source; no validation cases, so no validation inside the timing."""
    steps = a.steps if steps is None else steps
    warmup = a.warmup if warmup is None else warmup
    clock = _Clock(device)
    cfg = TrainConfig(steps=warmup + steps, batch_size=batch or a.batch, lr=1e-3, val_every=10**9, seed=0,
                      precision=precision, prefetch=prefetch, progress=False)
    res = train_segmenter(_model(a, num_classes, device, dims, features), _source(cases, num_classes, dims), [],
                          cfg, num_classes=num_classes, device=device, hooks=[clock])
    return {"ms_per_step": _ms_per_step(clock.times, warmup), "cpu_ms_per_step": _ms_per_step(clock.cpu, warmup),
            "data_wait_fraction": res.data_wait_fraction, "precision": res.precision}


# ------------------------------------------------------------------------------------------- sections
def section_loop(a: argparse.Namespace, data: Data) -> dict[str, Any]:
    device = resolve_device(a.device)
    dtype = resolve_precision(a.precision, device)
    variants: dict[str, Callable[[list[Case]], dict[str, float]]] = {
        "plain_predrawn": lambda c: plain_loop(a, c, data.num_classes, device, dtype, inline_data=False),
        "plain": lambda c: plain_loop(a, c, data.num_classes, device, dtype, inline_data=True),
        "segsynth_prefetch0": lambda c: segsynth_loop(a, c, data.num_classes, device, a.precision, 0),
        "segsynth": lambda c: segsynth_loop(a, c, data.num_classes, device, a.precision, a.prefetch),
    }
    out: dict[str, Any] = {"precision": describe_precision(dtype), "batch": a.batch, "steps": a.steps,
                           "warmup": a.warmup, "rounds": a.rounds, "sizes": {}}
    for size in a.sizes:
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        for _ in range(a.rounds):
            for name, fn in variants.items():
                runs[name].append(fn(data.cases[size]))
                print(f"  loop {size}² {name}: {runs[name][-1]['ms_per_step']:.1f} ms/step", flush=True)
        row = {name: {"ms_per_step": statistics.median(r["ms_per_step"] for r in rs),
                      "ms_per_step_rounds": [round(r["ms_per_step"], 2) for r in rs],
                      "cpu_ms_per_step": statistics.median(r["cpu_ms_per_step"] for r in rs),
                      "data_wait_fraction": statistics.median(r["data_wait_fraction"] for r in rs)}
               for name, rs in runs.items()}
        row["ratio"] = row["segsynth"]["ms_per_step"] / row["plain"]["ms_per_step"]
        # CPU time of the process (all threads) per step: less disturbed by other processes than wall time
        row["cpu_ratio"] = row["segsynth"]["cpu_ms_per_step"] / row["plain"]["cpu_ms_per_step"]
        row["ratio_vs_compute_only"] = row["segsynth"]["ms_per_step"] / row["plain_predrawn"]["ms_per_step"]
        row["within_target"] = row["ratio"] <= 1.05
        out["sizes"][str(size)] = row
    return out


def section_precision(a: argparse.Namespace, data: Data) -> dict[str, Any]:
    device = resolve_device(a.device)
    fast = device.type == "cuda" or cpu_has_fast_bf16()
    bf16_steps = a.steps if fast else a.bf16_steps
    out: dict[str, Any] = {"auto_picks": describe_precision(resolve_precision("auto", device)),
                           "native_bf16": fast, "bf16_steps": bf16_steps, "sizes": {}}
    if not fast:
        out["note"] = ("this CPU has no native bf16 kernels (no AMX / avx512_bf16): bf16 autocast is emulated "
                       f"and far slower, so only {bf16_steps} bf16 steps (after 1 warm-up) were timed; "
                       "--precision auto trains in fp32 here")
    for size in a.sizes:
        fp32 = segsynth_loop(a, data.cases[size], data.num_classes, device, "fp32", a.prefetch)
        bf16 = segsynth_loop(a, data.cases[size], data.num_classes, device, "bf16", a.prefetch,
                             steps=bf16_steps, warmup=a.warmup if fast else 1)
        out["sizes"][str(size)] = {"fp32_ms_per_step": fp32["ms_per_step"], "bf16_ms_per_step": bf16["ms_per_step"],
                                   "bf16_speedup": fp32["ms_per_step"] / bf16["ms_per_step"]}
        print(f"  precision {size}²: fp32 {fp32['ms_per_step']:.0f} ms, bf16 {bf16['ms_per_step']:.0f} ms/step",
              flush=True)
    return out


#: the 3D segmenter of the benchmarks (genseg_benchmark.py / synthesis_pays.py hippo3d): shape, features, batch
SHAPE_3D, FEATURES_3D, BATCH_3D = (40, 56, 40), UNET_FEATURES[3], 2


def section_precision3d(a: argparse.Namespace, data: Data) -> dict[str, Any]:
    """The 3D U-Net of the hippocampus benchmarks (40×56×40, batch 2): ms per step in fp32 and bf16 autocast."""
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path

    device = resolve_device(a.device)
    fast = device.type == "cuda" or cpu_has_fast_bf16()
    d = load_dataset(a.data or sample_path(), PreprocessSpec(spatial_dims=3, size=None, shape_3d=SHAPE_3D),
                     max_cases=a.volumes, progress=False)
    cases = [c for c in d.cases if c.mask is not None]
    kw = {"dims": 3, "batch": BATCH_3D, "features": FEATURES_3D}
    fp32 = segsynth_loop(a, cases, d.info.num_classes, device, "fp32", a.prefetch, **kw)
    bf16 = segsynth_loop(a, cases, d.info.num_classes, device, "bf16", a.prefetch,
                         steps=a.steps if fast else a.bf16_steps, warmup=a.warmup if fast else 1, **kw)
    shape = "×".join(map(str, SHAPE_3D))
    print(f"  precision3d {shape}: fp32 {fp32['ms_per_step']:.0f} ms, bf16 {bf16['ms_per_step']:.0f} ms/step",
          flush=True)
    return {"native_bf16": fast, "batch": BATCH_3D, "features": list(FEATURES_3D),
            "sizes": {shape: {"fp32_ms_per_step": fp32["ms_per_step"], "bf16_ms_per_step": bf16["ms_per_step"],
                              "bf16_speedup": fp32["ms_per_step"] / bf16["ms_per_step"]}}}


def section_demo(a: argparse.Namespace, data: Data) -> dict[str, Any]:
    if not a.demo:
        return {"skipped": "run with --demo (it takes minutes)"}
    exe = Path(sys.executable).with_name("segsynth")
    tmp = Path(tempfile.mkdtemp(prefix="segsynth_demo_"))
    try:
        t = time.perf_counter()
        subprocess.run([str(exe), "demo", "--out", str(tmp / "demo"), "--device", a.device, "-q"], check=True)
        return {"seconds": time.perf_counter() - t, "command": "segsynth demo -q"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: (shape, class axis) of the label maps made on every step: a 3D mask warp (3 classes, 40×56×40), a 2D one,
#: and a validation batch of 2D logits
ARGMAX_SHAPES = (((3, 40, 56, 40), 0), ((2, 256, 256), 0), ((16, 3, 64, 64), 1))


def section_argmax(a: argparse.Namespace, data: Data) -> dict[str, Any]:
    """Label maps from class scores: ``torch.argmax`` against ``segsynth.utils.labels.class_argmax`` (same answer)."""
    from segsynth.utils.labels import class_argmax

    g = torch.Generator().manual_seed(0)
    sizes: dict[str, Any] = {}
    for shape, dim in ARGMAX_SHAPES:
        x = torch.rand(*shape, generator=g)
        assert torch.equal(class_argmax(x, dim), x.argmax(dim))
        ms = {}
        for name, fn in (("torch_argmax", torch.argmax), ("class_argmax", class_argmax)):
            fn(x, dim)
            best = float("inf")
            for _ in range(5):  # the least disturbed of 5 rounds of 20 calls
                t = time.perf_counter()
                for _ in range(20):
                    fn(x, dim)
                best = min(best, (time.perf_counter() - t) / 20)
            ms[name] = 1000 * best
        key = f"{'×'.join(map(str, shape))} (axis {dim})"
        sizes[key] = {"torch_argmax_ms": ms["torch_argmax"], "class_argmax_ms": ms["class_argmax"],
                      "speedup": ms["torch_argmax"] / ms["class_argmax"]}
        print(f"  argmax {key}: torch {ms['torch_argmax']:.2f} ms, class_argmax {ms['class_argmax']:.2f} ms",
              flush=True)
    return {"threads": torch.get_num_threads(), "sizes": sizes}


# ------------------------------------------------------------------------------------------- plots
def _bar_pair(ax: Any, r: dict[str, Any], left: tuple[str, str], right: tuple[str, str]) -> list[str]:
    """Two bars per size: (key, label) on the left and on the right; returns the sizes (x order)."""
    sizes = list(r["sizes"])
    for offset, (key, label) in ((-0.2, left), (0.2, right)):
        ax.bar([j + offset for j in range(len(sizes))], [r["sizes"][s][key] for s in sizes], 0.4, label=label)
    return sizes


def plot_argmax(ax: Any, r: dict[str, Any]) -> None:
    sizes = _bar_pair(ax, r, ("torch_argmax_ms", "torch.argmax"), ("class_argmax_ms", "class_argmax"))
    ax.set_xticks(range(len(sizes)), [s.replace(" (", "\n(") for s in sizes], fontsize=6)
    ax.set_ylabel("ms / call")
    ax.set_title("label map from class scores")
    ax.legend(fontsize=7)


def plot_loop(ax: Any, r: dict[str, Any]) -> None:
    names = ["plain_predrawn", "plain", "segsynth_prefetch0", "segsynth"]
    sizes = list(r["sizes"])
    w = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([j + i * w for j in range(len(sizes))], [r["sizes"][s][n]["ms_per_step"] for s in sizes], w, label=n)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(sizes))],
                  [f"{s}²\nratio {r['sizes'][s]['ratio']:.3f}" for s in sizes])
    ax.set_ylabel("ms / step")
    ax.set_title(f"loop ({r['precision']}, batch {r['batch']})")
    ax.legend(fontsize=7)


def plot_data_wait(ax: Any, r: dict[str, Any]) -> None:
    names = ["plain", "segsynth_prefetch0", "segsynth"]
    sizes = list(r["sizes"])
    w = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([j + i * w for j in range(len(sizes))],
               [100 * r["sizes"][s][n]["data_wait_fraction"] for s in sizes], w, label=n)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(sizes))], [f"{s}²" for s in sizes])
    ax.set_ylabel("% of step time waiting for data")
    ax.set_title("data wait")
    ax.legend(fontsize=7)


def plot_precision(ax: Any, r: dict[str, Any]) -> None:
    sizes = _bar_pair(ax, r, ("fp32_ms_per_step", "fp32"), ("bf16_ms_per_step", "bf16 autocast"))
    ax.set_xticks(range(len(sizes)), [s if "×" in s else f"{s}²" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("ms / step (log)")
    ax.set_title(("precision 3D" if any("×" in s for s in sizes) else "precision")
                 + ("" if r["native_bf16"] else " (no native bf16 here)"))
    ax.legend(fontsize=7)


SECTIONS: dict[str, Section] = {
    "loop": Section(section_loop, plot_loop),
    "precision": Section(section_precision, plot_precision),
    "precision3d": Section(section_precision3d, plot_precision, default=False, needs_data=False),
    "demo": Section(section_demo, None, default=False, needs_data=False),
    "argmax": Section(section_argmax, plot_argmax, default=False, needs_data=False),
}
#: extra panels drawn from a section's result (the data-wait panel reads the loop section)
EXTRA_PANELS: list[tuple[str, Callable[[Any, dict[str, Any]], None]]] = [("loop", plot_data_wait)]


def write_plot(path: Path, sections: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, SECTIONS[name].plot) for name in sections
              if name in SECTIONS and SECTIONS[name].plot and "sizes" in sections[name]]
    panels += [(name, fn) for name, fn in EXTRA_PANELS if name in sections and "sizes" in sections[name]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (name, fn) in zip(axes[0], panels):
        fn(ax, sections[name])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main
def load_data(a: argparse.Namespace) -> Data:
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path

    root = a.data or sample_path()
    cases, k = {}, 2
    for size in a.sizes:
        d = load_dataset(root, PreprocessSpec(spatial_dims=2, size=size), max_cases=a.volumes, progress=False)
        cases[size] = [c for c in d.cases if c.mask is not None and c.mask.any()] or d.cases
        k = d.info.num_classes
    return Data(cases, k)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="precision of the loop comparison (the precision section measures both)")
    p.add_argument("--sizes", default="64,128", help="2D working sizes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repeats of each loop variant")
    p.add_argument("--bf16-steps", type=int, default=2, help="timed bf16 steps on a CPU without native bf16")
    p.add_argument("--prefetch", type=int, default=TrainConfig.prefetch, help="segsynth's prefetch depth")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--features", default="32,32,64,128,256,32", help="BasicUNet features")
    p.add_argument("--data", type=Path, default=None, help="labelled dataset (default: the shipped sample)")
    p.add_argument("--volumes", type=int, default=4, help="volumes of --data to slice (load time)")
    p.add_argument("--sections", default=None, help=f"comma-separated, from {', '.join(SECTIONS)} "
                                                    "(default: those on by default, plus demo with --demo)")
    p.add_argument("--demo", action="store_true", help="also time `segsynth demo` (minutes)")
    p.add_argument("--json", type=Path, default=None, help="output JSON (default results/speed/speed_<device>.json)")
    a = p.parse_args(argv)
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.features = [int(s) for s in a.features.split(",")]
    if a.sections is None:
        a.sections = [n for n, s in SECTIONS.items() if s.default or (n == "demo" and a.demo)]
    else:
        a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
        unknown = sorted(set(a.sections) - set(SECTIONS))
        if unknown:
            p.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    return a


def main(argv: list[str] | None = None) -> Path:
    a = parse_args(argv)
    device = resolve_device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    path = a.json or OUT / f"speed_{device.type}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    sections = dict(old.get("sections", {}))
    needs_data = any(SECTIONS[s].needs_data for s in a.sections)
    data = load_data(a) if needs_data else Data({}, 2)
    t0 = time.perf_counter()
    for name in a.sections:
        print(f"section {name}", flush=True)
        result = SECTIONS[name].run(a, data)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        for row in result.get("sizes", {}).values():  # each size says how it was measured
            row.update(steps=a.steps, warmup=a.warmup, rounds=a.rounds, load_average=os.getloadavg()[0],
                       measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if "sizes" in result and "sizes" in sections.get(name, {}):  # other sizes measured before are kept
            result["sizes"] = {**sections[name]["sizes"], **result["sizes"]}
        result["config"] = config
        result["machine"] = {**machine(), "native_bf16": cpu_has_fast_bf16() if device.type == "cpu" else None,
                             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        sections[name] = result
        write_json(path, {"benchmark": "speed", "device": str(device), "sections": sections,
                          "seconds_last_run": time.perf_counter() - t0})  # after each section: partial runs count
        write_plot(path.with_suffix(".png"), sections)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return path


if __name__ == "__main__":
    main()
