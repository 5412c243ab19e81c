"""Ray executor: sweep wall time local vs Ray, Ray's cost per task, sharded synthesis.

    flock /tmp/segsynth_heavy.lock .venv/bin/python benchmarks/ray_scaling.py     # CPU, about 5 min on 2 cores

On the shipped hippocampus sample (2D slices, 64x64):

* ``sweep``: one 12-run sweep (none, augment x N = 1, 2, 4 x seeds 0, 1; small U-Net) two ways: local with
  1 torch thread, and ``--executor ray`` with 1 CPU per run on a local Ray instance with one CPU per core. Wall seconds each, and whether Ray's records equal the 1-thread local ones
  (they must: a run is a pure function of its inputs; timing fields aside).
* ``overhead``: Ray start-up (``ray.init``), the first task on a fresh worker (Python + torch import), and the
  cost per task of 200 empty tasks on warm workers (submit to result).
* ``synthesis``: ``segsynth synthesize`` of 2,000 pairs with a small untrained GenSeg generator (the cheapest
  generator: one Pix2Pix forward per pair) with 1 shard (local) and 2 shards (local and Ray), and whether the
  2-shard outputs are byte-identical.

Writes ``benchmarks/results/ray/ray_scaling.json`` and ``ray_scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine

OUT = RESULTS / "ray"
TIMING = ("seconds", "train_seconds", "peak_memory_mb")


def cells(records: list[dict]) -> dict:
    return {(r["method"], r["n_train"], r["seed"], r["test_set"]): {k: v for k, v in r.items() if k not in TIMING}
            for r in records}


def sweep_cfg(out: Path, steps: int, executor: str = "local"):
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path
    from segsynth.experiments.sweep import SweepConfig
    from segsynth.segment.train import TrainConfig

    return SweepConfig(data=sample_path(), out=out, methods=["none", "augment"], n_values=[1, 2, 4], seeds=[0, 1],
                       n_val=2, n_test=2, segmenter_kwargs={"features": (8, 8, 16, 32, 64, 8)},
                       spec=PreprocessSpec(spatial_dims=2, size=64), device="cpu", sample_predictions=0,
                       report=False, train=TrainConfig(steps=steps, batch_size=8, lr=3e-3, val_every=steps // 2,
                                                       progress=False), executor=executor, cpus_per_run=1)


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn(*args, **kw)
    return time.perf_counter() - t0, value


def _noop(i: int) -> int:
    return i


def _import_torch() -> float:
    t0 = time.perf_counter()
    import torch  # noqa: F401

    import segsynth.experiments.sweep  # noqa: F401
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--sections", default="sweep,overhead,synthesis",
                   help="what to measure (overhead alone takes under a minute); others in the JSON are kept")
    a = p.parse_args()
    sections = set(a.sections.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import ray
    import torch

    from segsynth.experiments.sweep import run_sweep

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="ray_scaling_"))
    path = OUT / "ray_scaling.json"
    res: dict = json.loads(path.read_text()) if path.exists() else {}
    res.update({"cores": cores, "steps": a.steps, "ray": ray.__version__})

    # ---------------------------------------------------------------- sweep, local
    torch.set_num_threads(1)  # as each Ray task (1 CPU per run); more threads beside other busy processes
    if "sweep" in sections:  # were 20x slower here (issue 14)
        t_local1, rec_local = timed(run_sweep, sweep_cfg(tmp / "local1", a.steps))
        print(f"local sweep: {t_local1:.1f} s (1 thread)", flush=True)

    # ---------------------------------------------------------------- Ray start-up and per-task overhead
    t_init, _ = timed(ray.init, num_cpus=cores, include_dashboard=False, log_to_driver=False)
    remote_import = ray.remote(num_cpus=1)(_import_torch)
    t_first, inner = timed(lambda: ray.get([remote_import.remote() for _ in range(cores)]))
    if "overhead" in sections:
        noop = ray.remote(num_cpus=1)(_noop)
        ray.get([noop.remote(i) for i in range(20)])  # warm
        t_200, _ = timed(lambda: ray.get([noop.remote(i) for i in range(200)]))
        t_rt = min(timed(lambda: ray.get(noop.remote(0)))[0] for _ in range(20))
        res["overhead"] = {"ray_init_s": t_init, "first_task_on_fresh_workers_s": t_first,
                           "torch_and_segsynth_import_in_worker_s": inner,
                           "per_task_ms_200_tasks": 1000 * t_200 / 200, "round_trip_ms_one_task": 1000 * t_rt,
                           "load_average": os.getloadavg()}
        print("overhead", json.dumps(res["overhead"]), flush=True)
    if "sweep" in sections:
        sweep_section(res, tmp, a.steps, t_local1, rec_local)
    if "synthesis" in sections:
        synthesis_section(res, tmp, a.pairs)
    ray.shutdown()
    res["machine"] = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2))
    if {"sweep", "synthesis", "overhead"} <= set(res):
        plot(res, OUT / "ray_scaling.png")
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=2))


def sweep_section(res: dict, tmp: Path, steps: int, t_local1: float, rec_local: list[dict]) -> None:
    """The same sweep with Ray (workers already warm), against the local one."""
    from segsynth.experiments.sweep import run_sweep

    cores = res["cores"]
    t_ray, rec_ray = timed(run_sweep, sweep_cfg(tmp / "ray", steps, executor="ray"))
    res["sweep"] = {"runs": 12, "local_1_thread_s": t_local1, "ray_1_cpu_per_run_s": t_ray,
                    "ray_parallel_runs": cores, "speedup_vs_local_1_thread": t_local1 / t_ray,
                    "ray_records_equal_local": cells(rec_ray) == cells(rec_local),
                    "mean_run_seconds_local_1_thread": sum(r["seconds"] for r in rec_local) / len(rec_local)}
    print("sweep", json.dumps(res["sweep"]), flush=True)


def synthesis_section(res: dict, tmp: Path, pairs: int) -> None:
    """``segsynth synthesize`` of ``pairs`` pairs: 1 shard local, 2 shards local and on Ray."""
    from segsynth.cli import main as cli
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path
    from segsynth.generators.genseg import GenSegGenerator

    data = load_dataset(sample_path(), PreprocessSpec(spatial_dims=2, size=64), progress=False)
    gen = GenSegGenerator(features=8, max_features=32, disc_features=8)
    gen.build_for([c for c in data.cases if c.mask is not None], seed=0, info=data.info)
    gen.save(tmp / "gen")
    args = ["synthesize", "--model", str(tmp / "gen"), "--augment-from", str(sample_path()), "--n", str(pairs),
            "--device", "cpu", "-q"]
    syn = {}
    for name, extra in [("local_1_shard", ["--shards", "1"]), ("local_2_shards", ["--shards", "2"]),
                        ("ray_2_shards", ["--shards", "2", "--executor", "ray"])]:
        t, code = timed(cli, [*args, *extra, "--out", str(tmp / name)])
        assert code == 0
        syn[name + "_s"] = t
        print(f"synthesis {name}: {t:.1f} s", flush=True)

    def tree(root: Path) -> dict:
        return {str(q.relative_to(root)): q.read_bytes() for q in sorted(root.rglob("*")) if q.is_file()}

    syn["pairs"] = pairs
    syn["ray_2_shards_identical_to_local_2_shards"] = tree(tmp / "ray_2_shards") == tree(tmp / "local_2_shards")
    syn["speedup_ray_2_vs_local_1"] = syn["local_1_shard_s"] / syn["ray_2_shards_s"]
    res["synthesis"] = syn


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, y, cores = res["sweep"], res["synthesis"], res["cores"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["local\n1 thread", f"Ray\n1 CPU/run, {cores} at once"]
    vals = [s["local_1_thread_s"], s["ray_1_cpu_per_run_s"]]
    axes[0].bar(names, vals, color=["#888", "#1f77b4"])
    axes[0].set_ylabel("wall seconds")
    axes[0].set_title(f"12-run sweep, {cores} cores (Ray task overhead "
                      f"{res['overhead']['per_task_ms_200_tasks']:.1f} ms)", fontsize=9)
    names = ["local\n1 shard", "local\n2 shards", "Ray\n2 shards"]
    vals = [y["local_1_shard_s"], y["local_2_shards_s"], y["ray_2_shards_s"]]
    axes[1].bar(names, vals, color=["#888", "#aaa", "#1f77b4"])
    axes[1].set_title(f"synthesis of {y['pairs']} GenSeg pairs", fontsize=9)
    for ax in axes:
        for bar in ax.patches:
            ax.annotate(f"{bar.get_height():.0f} s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
