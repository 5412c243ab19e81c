"""nnU-Net v2 as the peer (issue 40): does a segsynth recipe beat nnU-Net on the same few labels, and do
synthetic pairs add to nnU-Net itself?

    python benchmarks/nnunet_peer.py kvasir --splits 6            # matched images, then matched wall clock
    python benchmarks/nnunet_peer.py jsrt --splits 6 --recipe separate_aug
    python benchmarks/nnunet_peer.py hippo3d --splits 6 --budget images

Per task, one sweep per budget, each over ``--splits`` seeds (the split is the unit of the verdict):

* ``images`` (``<out>/images``): ``augment``, the recipe, ``nnunet`` and ``nnunet+<recipe>``, nnU-Net's
  epochs x iterations set to the images the other runs see (``--steps`` x their batch size);
* ``seconds`` (``<out>/seconds``): ``nnunet`` and ``nnunet+<recipe>`` with a wall-clock budget, the
  ``train_seconds`` of the ``augment`` run of the same split (its records are copied in from the first sweep, so
  augment is not trained again, and the budget reads them).

Tasks: Kvasir 32 + 8 (in domain); JSRT 7 + 2 (in domain and on Shenzhen); ISIC 32 + 8 (in domain and on PH2);
hippocampus 3D with 2 volumes. Data comes from ../shared/data. Each record has its seconds and peak memory
(the sweep's own fields); nnU-Net's records also say which budget ran (``nnunet_budget``).

Writes ``benchmarks/results/nnunet_peer_<task>[_<tag>].json`` (summary, method-level verdicts per budget) and
``..._dice.png``; the sweeps in ``benchmarks/results/nnunet_peer_<task>[_<tag>]/{images,seconds}/``.
``--out`` writes elsewhere (a smoke run at tiny scale: ``--steps 4 --splits 1 --iterations 2 --out /tmp/x``).
A call for some splits (``--splits 1 --first-split K``, to run splits side by side) adds its runs to the sweeps
but leaves the summary alone; ``--splits 6`` afterwards writes it from every split (finished runs are skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, UNET_FEATURES, shared, write_summary  # noqa: E402
from genseg_benchmark import dice_plot, generator_options  # noqa: E402
from synthesis_pays import build_parser as synthesis_parser  # noqa: E402

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, print_summary, run_sweep  # noqa: E402
from segsynth.experiments.verdict import verdicts  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402
from segsynth.utils.files import dir_lock  # noqa: E402

#: task -> (folder, n_train, n_val, spatial dims, 2D size / 3D shape, external test folder or None)
TASKS: dict[str, tuple[str, int, int, int, Any, str | None]] = {
    "kvasir": ("kvasir_polyps", 32, 8, 2, 64, None),
    "jsrt": ("jsrt_lungs", 7, 2, 2, 64, "shenzhen_lungs"),
    "isic": ("isic2017_skin", 32, 8, 2, 64, "ph2_skin"),
    "hippo3d": ("hippocampus", 2, 2, 3, (40, 56, 40), None),
}

#: the fewest splits a committed summary is written from (the issue's "at least 6 splits"); --splits' default
MIN_SPLITS = 6

#: what each budget matches, in the sweeps' report titles and the summary plot's
BUDGET_TITLES = {"images": "matched images", "seconds": "augment's wall clock"}

def flagship_generator(dims: int) -> dict[str, Any]:
    """The Pix2Pix / GenSeg generator of the flagship sweeps (benchmarks/synthesis_pays.py at its defaults: width 16
    in 2D, 8 in 3D), so that ``separate_aug`` here is the recipe those sweeps measured; --recipe-options replaces
    it."""
    defaults = synthesis_parser().parse_args(["kvasir", "--stage", "sweep"])
    return generator_options(defaults, dims)


def sweep_configs(a: argparse.Namespace, out: Path) -> dict[str, SweepConfig]:
    folder, n_train, n_val, dims, size, external = TASKS[a.task]
    data = Path(a.data) if a.data else shared(folder)
    test_data = None
    if external and not a.no_external:
        test_data = Path(a.test_data) if a.test_data else shared(external)
    batch = a.batch_size or (8 if dims == 2 else 2)
    train = TrainConfig(steps=a.steps, batch_size=batch, lr=a.lr, val_every=max(1, a.steps // 8), progress=False)
    spec = PreprocessSpec(size=a.size or size) if dims == 2 else PreprocessSpec(spatial_dims=3, size=None,
                                                                                 shape_3d=tuple(size))
    nn_opts: dict[str, Any] = {}
    if a.iterations:
        nn_opts["iterations_per_epoch"] = a.iterations
    combo = f"nnunet+{a.recipe}"
    combo_opts = {"n_synthetic": a.n_synthetic} if a.n_synthetic else {}
    seeds = list(range(a.first_split, a.first_split + a.splits))
    base = dict(data=data, test_data=test_data, n_values=[a.n_train or n_train], seeds=seeds,
                n_val=a.n_val or n_val, n_test=a.n_test, spec=spec, train=train, device=a.device,
                segmenter="unet", segmenter_kwargs={"features": UNET_FEATURES[dims]},
                fidelity=False, sample_predictions=2)
    if a.recipe_options:
        recipe_opts = {a.recipe: json.loads(a.recipe_options)}
    elif a.recipe.startswith(("separate", "genseg")):
        recipe_opts = {a.recipe: flagship_generator(dims)}
    else:
        recipe_opts = {}
    out_cfgs = {}
    if "images" in a.budget:
        opts = {"nnunet": dict(nn_opts), combo: {**nn_opts, **combo_opts, **recipe_opts.get(a.recipe, {})},
                **recipe_opts}
        out_cfgs["images"] = SweepConfig(out=out / "images", methods=["augment", a.recipe, "nnunet", combo],
                                         method_options=opts,
                                         title=f"nnU-Net peer, {a.task}: {BUDGET_TITLES['images']}",
                                         **base)
    if "seconds" in a.budget:
        sec = {**nn_opts, "budget": "seconds"}
        opts = {"nnunet": dict(sec), combo: {**sec, **combo_opts, **recipe_opts.get(a.recipe, {})}}
        out_cfgs["seconds"] = SweepConfig(out=out / "seconds", methods=["augment", "nnunet", combo],
                                          method_options=opts,
                                          title=f"nnU-Net peer, {a.task}: {BUDGET_TITLES['seconds']}",
                                          **base)
    if a.methods:
        wanted = [m.strip() for m in a.methods.split(",") if m.strip()]
        known = {m for c in out_cfgs.values() for m in c.methods}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise SystemExit(f"--methods: unknown {', '.join(unknown)} (this call's sweeps run "
                             f"{', '.join(sorted(known))})")
        out_cfgs = {b: dataclasses.replace(c, methods=[m for m in c.methods if m in wanted])
                    for b, c in out_cfgs.items() if set(c.methods) & set(wanted)}
    return out_cfgs


def seed_wall_clock_sweep(images_out: Path, seconds_out: Path) -> None:
    """The ``augment`` records of the images sweep, copied into the wall-clock sweep (not trained again): the
    wall-clock budget of nnU-Net reads their ``train_seconds``."""
    src = images_out / "results.jsonl"
    if not src.exists():
        raise SystemExit(f"the wall-clock sweep needs the images sweep's augment runs first ({src})")
    seconds_out.mkdir(parents=True, exist_ok=True)
    dst = seconds_out / "results.jsonl"
    with dir_lock(seconds_out):  # two --methods calls side by side: the record is copied once
        have = dst.read_text().splitlines() if dst.exists() else []
        keys = {(r["method"], r["seed"], r["test_set"]) for r in map(json.loads, have)}
        with open(dst, "a") as f:
            for line in src.read_text().splitlines():
                r = json.loads(line)
                if r.get("method") == "augment" and r.get("status") == "ok" and \
                        (r["method"], r["seed"], r["test_set"]) not in keys:
                    f.write(line + "\n")


def partial_call(a: argparse.Namespace) -> bool:
    """A call that runs some of the splits (``--first-split K`` or fewer than MIN_SPLITS) or some of the methods
    (``--methods``): its sweeps resume into the shared results.jsonl, but its summary would hold only its own runs,
    so it must not replace the committed one."""
    return a.first_split > 0 or a.splits < MIN_SPLITS or bool(a.methods)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--splits", type=int, default=MIN_SPLITS,
                   help=f"seeds, i.e. splits (the verdict's unit); >= {MIN_SPLITS}")
    p.add_argument("--first-split", type=int, default=0, help="first seed (a split per call, then all at once: "
                   "finished runs are not run again)")
    p.add_argument("--recipe", default="separate_aug", help="the segsynth recipe (its generator joins nnU-Net)")
    p.add_argument("--recipe-options", default=None, help="JSON options of the recipe (and of its generator)")
    p.add_argument("--n-synthetic", type=int, default=None, help="synthetic pairs nnunet+<recipe> adds (default: "
                   "as many as the real training cases)")
    p.add_argument("--budget", default="images,seconds", help="images, seconds or both (seconds needs images)")
    p.add_argument("--methods", default=None, help="comma-separated: run only these of the sweeps' methods "
                   "(e.g. nnunet+separate_aug beside another call running nnunet on the same split; each run "
                   "appends its own lines to results.jsonl); the summary is left alone")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=3e-3, help="segsynth's segmenters (the flagship sweeps' 3e-3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (nnU-Net's subprocesses too)")
    p.add_argument("--iterations", type=int, default=None, help="nnU-Net iterations per epoch (default: its own "
                   "min(250, the budget's))")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--data", default=None, help="the task's data (default: ../shared/data/<task folder>)")
    p.add_argument("--test-data", default=None)
    p.add_argument("--no-external", action="store_true", help="in-domain test set only")
    p.add_argument("--device", default="auto")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    name = f"nnunet_peer_{a.task}{'_' + a.tag if a.tag else ''}"
    results = Path(a.out) if a.out else RESULTS
    out = results / name
    cfgs = sweep_configs(a, out)
    all_records: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for budget, cfg in cfgs.items():
        if budget == "seconds":
            seed_wall_clock_sweep(out / "images", cfg.out)
        records = run_sweep(cfg)
        print(f"\n== {budget} ==")
        print_summary(records, cfg.out)
        comparisons += [{"budget": budget, **v} for v in verdicts(records, baselines=("augment", "nnunet"))]
        # one plot and one summary for both sweeps: the wall-clock runs are named apart (augment is the same)
        all_records += [{**r, "budget": budget, "method": r["method"] if budget == "images" else
                         f"{r['method']} (wall clock)"} for r in records
                        if not (budget == "seconds" and r["method"] == "augment")]
    if not a.out and partial_call(a):
        last = a.first_split + a.splits - 1
        which = f"method(s) {a.methods} of " if a.methods else ""
        print(f"\nsummary not written: this call ran {which}split(s) {a.first_split}-{last} only, and "
              f"{RESULTS / name}.json holds the whole benchmark; `--splits {max(last + 1, MIN_SPLITS)}` writes it "
              "(finished runs are not run again)")
        return 0
    config = {"task": a.task, "splits": a.splits, "first_split": a.first_split, "recipe": a.recipe, "steps": a.steps,
              "lr": a.lr,
              "threads": a.threads, "segmenter_features": UNET_FEATURES[TASKS[a.task][3]],
              "budgets": list(cfgs), "sweeps": {b: str(c.out) for b, c in cfgs.items()},
              "train": dataclasses.asdict(next(iter(cfgs.values())).train)}
    if a.out:  # a smoke run: nothing under benchmarks/results
        from segsynth.utils.files import write_json

        path = results / f"{name}.json"
        write_json(path, {"benchmark": name, "config": config, "comparisons": comparisons})
    else:
        path = write_summary(name, config, all_records, comparisons)
    plot_cfg = dataclasses.replace(next(iter(cfgs.values())), title=f"nnU-Net peer, {a.task}: " +
                                   " and ".join(BUDGET_TITLES[b] for b in cfgs),
                                   methods=list(dict.fromkeys(r["method"] for r in all_records)))
    dice_plot([r for r in all_records if r.get("status") == "ok"], plot_cfg, path.with_name(f"{name}_dice.png"))
    print(f"\nsummary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
