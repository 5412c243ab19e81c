"""brainSPADE sampling speed per sampler and batch size, and memory while streaming pairs to disk (issue 12).

    flock /tmp/segsynth_heavy.lock .venv/bin/python benchmarks/sampling_speed.py          # about 2 min, 2 threads

Pairs per second of the whole pair (label diffusion in latent space + autoencoder decode + SPADE image) at
64² on the shipped hippocampus sample, for DDIM (50, 25 steps) and DPM-Solver++(2M) (``dpm``: 15, 10 steps;
``segsynth.generators.brainspade.samplers``), each at batch sizes 16 and 64, in fp32 and (where the CPU has
native bf16 kernels, or on CUDA) bf16 autocast. Speed does not depend on what the
networks learnt, so they are fitted for one step only (the default architecture of ``BrainSpadeGenerator``);
whether fewer steps keep the Dice of a synthetic-only segmenter is ``brainspade_benchmark.py
--samplers ddim50,dpm15,dpm10 --dice-per-sampler`` (trained models, much longer).

Memory: ``write_synthetic_dataset`` streams ``--stream-n`` pairs into a dataset folder (one batch in memory)
while a thread samples the process's resident memory; the JSON records it at 10 %, 50 % and 100 % of the pairs
(flat = streaming works; 20,000 pairs grow only the folder on disk).

``--stream-only --stream-n 20000 --stream-sampler dpm6@bf16 --json results/sampling_stream_20k.json`` skips
the speed table and only streams (issue 12's "memory flat while writing 20,000 pairs"); the resident-memory
trace against pairs written goes to ``<json stem>_memory.png``.

Writes ``benchmarks/results/sampling_speed.json`` and ``sampling_speed.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import RESULTS, machine, parse_sampler_spec  # noqa: E402
from segsynth.utils.files import write_json  # noqa: E402

SAMPLERS = [("ddim", 50), ("ddim", 25), ("dpm", 15), ("dpm", 10)]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(size: int):
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path
    from segsynth.generators.brainspade import BrainSpadeGenerator

    data = load_dataset(sample_path(), PreprocessSpec(spatial_dims=2, size=size), progress=False, max_cases=4)
    train = [c for c in data.cases if c.mask is not None and c.mask.any()][:16]
    gen = BrainSpadeGenerator(spatial_dims=2, num_classes=data.info.num_classes, in_channels=data.info.in_channels,
                              ae_steps=1, ldm_steps=1, spade_steps=1, progress=False)
    gen.fit(train, seed=0)
    return gen, data.info


def stream_memory(gen, info, n: int, batch: int, sampler: str, steps: int, precision: str = "fp32"
                  ) -> dict[str, Any]:
    from segsynth.generators.brainspade import write_synthetic_dataset

    out = Path(tempfile.mkdtemp(prefix="segsynth_stream_")) / "syn"
    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    every = max(0.5, n / 4000)  # counting 2n files costs CPU: look less often on long streams

    def written_files() -> int:  # images + masks so far (os.listdir: cheap next to rglob on 40,000 files)
        for folder in (out.parent / f".{out.name}.partial", out):
            try:
                return len(os.listdir(folder / "images")) + len(os.listdir(folder / "masks"))
            except OSError:
                continue
        return 0

    def watch() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mb(), written_files()))
            stop.wait(every)

    th = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    th.start()
    try:
        write_synthetic_dataset(gen, out, n, info=info, seed=0, batch_size=batch, sampler=sampler, steps=steps,
                                fmt="nifti", progress=False, precision=precision)
    finally:
        stop.set()
        th.join()
        seconds = time.perf_counter() - t0
        shutil.rmtree(out.parent, ignore_errors=True)

    def at(frac: float) -> float:
        goal = frac * 2 * n  # image + mask files per pair
        hit = [r for _, r, w in samples if w >= goal]
        return float(hit[0]) if hit else float(samples[-1][1])

    stride = max(1, len(samples) // 200)
    trace = [{"seconds": round(t - t0, 2), "rss_mb": round(r, 1), "pairs": w // 2} for t, r, w in samples[::stride]]
    from segsynth.experiments.shards import READ_AHEAD_BATCHES

    return {"n": n, "batch_size": batch, "sampler": sampler, "steps": steps, "precision": precision,
            "read_ahead_batches": READ_AHEAD_BATCHES, "seconds": seconds, "trace": trace,
            "pairs_per_s": n / seconds, "rss_mb_at_10pct": at(0.1), "rss_mb_at_50pct": at(0.5),
            "rss_mb_at_end": float(samples[-1][1]), "rss_mb_peak": max(r for _, r, _ in samples)}


def plot(path: Path, rows: list[dict[str, Any]], target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * len(rows)))
    labels = [f"{r['sampler']}{r['steps']} b{r['batch_size']} {r.get('precision', 'fp32')}" for r in rows]
    ax.barh(range(len(rows)), [r["pairs_per_s"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(target, color="tab:red", ls="--", label=f"target {target:g} pairs/s")
    ax.set_xlabel("brainSPADE pairs per second (64², CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def memory_plot(path: Path, stream: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["pairs"] for r in stream["trace"]], [r["rss_mb"] for r in stream["trace"]], color="tab:blue")
    ax.set_xlabel("pairs written")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(0, 1.2 * max(r["rss_mb"] for r in stream["trace"]))
    ax.set_title(f"streaming {stream['n']:,} brainSPADE pairs ({stream['sampler']}{stream['steps']}, "
                 f"{stream['precision']}, batch {stream['batch_size']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    from segsynth.generators.brainspade import sampling_speed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=128, help="pairs per speed measurement")
    p.add_argument("--batches", default="16,64")
    p.add_argument("--samplers", default=",".join(f"{s}{n}" for s, n in SAMPLERS),
                   help="sampler and steps, e.g. ddim50,dpm10,dpm8")
    p.add_argument("--precisions", default="fp32,bf16",
                   help="sampling precisions (bf16 runs only where the CPU has native bf16 kernels)")
    p.add_argument("--stream-n", type=int, default=2000, help="pairs written while memory is watched (0: skip)")
    p.add_argument("--stream-only", action="store_true", help="skip the speed table; only stream --stream-n pairs")
    p.add_argument("--stream-sampler", default=None,
                   help="sampler of the stream, e.g. dpm6@bf16 (default: the fastest setting of the table)")
    p.add_argument("--stream-batch", type=int, default=64)
    p.add_argument("--read-ahead", type=int, default=None,
                   help="batches sampled ahead of the writing while streaming (default: the package's, "
                        "segsynth.experiments.shards.READ_AHEAD_BATCHES; 0: sample, then write)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=RESULTS / "sampling_speed.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from segsynth.experiments import shards

    if a.read_ahead is not None:
        shards.READ_AHEAD_BATCHES = a.read_ahead
    gen, info = build(a.size)
    from segsynth.utils.precision import cpu_has_fast_bf16

    precisions = [v for v in a.precisions.split(",") if v and (v != "bf16" or cpu_has_fast_bf16())]
    samplers = [parse_sampler_spec(v)[:2] for v in a.samplers.split(",") if v]
    rows = []
    for sampler, steps in ([] if a.stream_only else samplers):
        for b in (int(v) for v in a.batches.split(",")):
            for prec in precisions:
                gen.sample_from_seeds([0, 1], sampler=sampler, steps=steps, precision=prec)  # warm-up
                r = sampling_speed(gen, a.n, sampler=sampler, steps=steps, batch_size=b, precision=prec)
                r["batch_size"] = b
                rows.append(r)
                print(f"{sampler}{steps:<4d} batch {b:3d} {prec}: {r['pairs_per_s']:.1f} pairs/s", flush=True)
    if a.stream_sampler:
        sampler, steps, prec = parse_sampler_spec(a.stream_sampler, "fp32")
        best = {"sampler": sampler, "steps": steps, "precision": prec, "batch_size": a.stream_batch}
    elif rows:
        best = max(rows, key=lambda r: r["pairs_per_s"])
    else:
        raise SystemExit("--stream-only needs --stream-sampler (there is no speed table to pick from)")
    stream = (stream_memory(gen, info, a.stream_n, best["batch_size"], best["sampler"], best["steps"],
                            best["precision"]) if a.stream_n else None)
    if stream:
        print(f"streamed {stream['n']} pairs at {stream['pairs_per_s']:.1f} pairs/s; RSS {stream['rss_mb_at_10pct']:.0f}"
              f" MB at 10 %, {stream['rss_mb_at_50pct']:.0f} at 50 %, {stream['rss_mb_at_end']:.0f} at the end")
    write_json(a.json, {"benchmark": "sampling_speed", "machine": machine(), "threads": a.threads, "size": a.size,
                        "native_bf16": cpu_has_fast_bf16(), "speed": rows, "stream": stream, "target_pairs_per_s": 50})
    if rows:
        plot(a.json.with_suffix(".png"), rows, 50)
    if stream:
        memory_plot(a.json.with_name(a.json.stem + "_memory.png"), stream)
    print(f"wrote {a.json} and its figures")


if __name__ == "__main__":
    main()
