"""Low-data sweeps: methods x N labelled cases x seeds, evaluated on real held-out data.

For each seed the labelled pool is split once (validation and test fixed for that seed) and the training
sets are nested: the N=1 case is among the N=2 cases, and so on, so a learning curve compares like with like.
Every finished run is one line of ``results.jsonl``; a killed sweep continues where it stopped and repeats
nothing. The test cases never enter training or model selection.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case, LoadedDataset
from segsynth.errors import ConfigError, DataError
from segsynth.evaluate.metrics import case_metrics, case_spacing
from segsynth.evaluate.stats import ok_records
from segsynth.experiments.executors import check_executor, make_executor
from segsynth.generators import METHODS, get_method
from segsynth.generators.base import MethodContext, check_can_run
from segsynth.segment.inference import predict_many
from segsynth.segment.train import TrainConfig
from segsynth.utils.device import (
    compute_description,
    compute_label,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
)
from segsynth.utils.files import append_jsonl, folders_under, prune_empty_dirs, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    data: Path
    out: Path
    methods: list[str]
    n_values: list[int]
    seeds: list[int]
    test_data: Path | None = None
    unlabelled_data: Path | None = None
    target_unlabelled: Path | None = None  # unlabelled images of the deployment site (the *_target methods)
    n_val: int = 2
    n_test: int | None = None
    max_unlabelled: int | None = None
    segmenter: str = "unet"
    segmenter_kwargs: dict[str, Any] = field(default_factory=dict)
    spec: Any = None  # segsynth.data.preprocess.PreprocessSpec
    train: TrainConfig = field(default_factory=TrainConfig)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    sample_predictions: int = 3
    title: str | None = None
    report: bool = True
    executor: str = "local"            # "local" (in this process) or "ray" (one Ray task per run)
    ray_address: str | None = None     # a running Ray cluster; None starts a local Ray instance
    cpus_per_run: float = 1.0          # Ray resource request of each run
    gpus_per_run: float = 0.0
    max_retries: int = 3               # Ray: restarts of a run whose worker died (it resumes from its checkpoint)
    fidelity: bool = True              # label fidelity of generator methods' pairs (segsynth.evaluate.fidelity)
    fidelity_pairs: int = 100          # synthetic pairs scored per generator run


@dataclass
class SeedData:
    """The preprocessed cases the runs of one seed need (shipped once to Ray's object store)."""

    train: list[Case]                  # the n_max training cases, nested: run N trains on first_n(train, N)
    val: list[Case]
    unlabelled: list[Case]
    test_sets: list[tuple[str, list[Case]]]
    target: list[Case] = field(default_factory=list)  # --target-unlabelled (the same for every seed)


SHARED = "_shared"  # runs/_shared: what runs of one sweep reuse from each other (fitted generators)


def run_key(method: str, n: int, seed: int) -> str:
    return f"{method}_n{n}_s{seed}"


def _volume_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases grouped by source volume (2D slices of one volume stay together), order kept."""
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(str(c.meta.get("volume_id", c.case_id)), []).append(c)
    return list(groups.values())


def first_n(cases: Sequence[Case], n: int) -> list[Case]:
    """The first n labelled units (volumes when cases are slices of volumes): nested training sets."""
    return [c for g in _volume_groups(cases)[:n] for c in g]


def load_for_sweep(cfg: SweepConfig) -> tuple[LoadedDataset, LoadedDataset | None, list[Case]]:
    from segsynth.data.dataset import load_dataset, load_unlabelled
    from segsynth.data.preprocess import PreprocessSpec

    spec = cfg.spec or PreprocessSpec()
    data = load_dataset(cfg.data, spec)
    test = None
    if cfg.test_data is not None:
        test = load_dataset(cfg.test_data, spec)
        if test.info.num_classes != data.info.num_classes:
            raise DataError(f"test data has {test.info.num_classes} classes ({test.info.labels}) but the training "
                            f"data has {data.info.num_classes} ({data.info.labels})", cfg.test_data)
        if test.info.in_channels != data.info.in_channels:
            raise DataError(f"test images have {test.info.in_channels} channels, training images "
                            f"{data.info.in_channels}", cfg.test_data)
        data = drop_shared_cases(data, test, cfg.test_data)
    unlabelled: list[Case] = []
    if cfg.unlabelled_data is not None:
        unlabelled = load_unlabelled(cfg.unlabelled_data, spec)
    return data, test, unlabelled


def load_target_for_sweep(cfg: SweepConfig, data: LoadedDataset, external: LoadedDataset | None) -> list[Case]:
    """The ``--target-unlabelled`` images (``segsynth.data.target.load_target``), after the leak check: no image of
    the test data (``--test-data``) nor of ``--data`` (whose unused cases are tested in domain) may be among them,
    by id or by decoded pixels. [] without the option."""
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.target import check_no_leak, load_target

    if cfg.target_unlabelled is None:
        return []
    target = load_target(cfg.target_unlabelled, cfg.spec or PreprocessSpec(), data.info)
    tested = [(cfg.test_data, external.cases)] if external is not None else []
    check_no_leak(target, cfg.target_unlabelled, [*tested, (cfg.data, data.cases, False)])  # another site: pixels only
    return target


def drop_shared_cases(data: LoadedDataset, test: LoadedDataset, test_root: Path | str) -> LoadedDataset:
    """Leave out of the training data every case (or volume) whose id also names a case of the external test set.

    An external test set made from the same scans (a re-styled copy, another export of one cohort) would
    otherwise leak into training. Ids are compared on ``meta["volume_id"]`` when present, else ``case_id``.
    """
    def key(c: Case) -> str:
        return str(c.meta.get("volume_id", c.case_id))

    shared = {key(c) for c in test.cases} & {key(c) for c in data.cases}
    if not shared:
        return data
    log.warning("%d case(s) of the test data %s share their id with training data (e.g. %s): they are left out "
                "of training, validation and the in-domain test set", len(shared), test_root, sorted(shared)[0])
    kept = [c for c in data.cases if key(c) not in shared]
    return dataclasses.replace(data, cases=kept)


def drop_labelled_ids(unlabelled: Sequence[Case], labelled: Sequence[Case], root: Path | str | None) -> list[Case]:
    """Leave out unlabelled images whose id (``meta["volume_id"]`` or ``case_id``) names a labelled case of the
    split: ``--unlabelled`` pointed at the labelled dataset itself must not bring the test (or validation, or
    training) images back in as unlabelled ones."""
    def key(c: Case) -> str:
        return str(c.meta.get("volume_id", c.case_id))

    taken = {key(c) for c in labelled}
    kept = [c for c in unlabelled if key(c) not in taken]
    if len(kept) < len(unlabelled):
        log.info("%d unlabelled image(s) of %s are cases of the labelled split (training, validation or test): "
                 "left out of the unlabelled images", len(unlabelled) - len(kept), root)
    return kept


def run_sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Run (or resume) a sweep; returns all records in results.jsonl and writes the report."""
    if not cfg.methods or not cfg.n_values or not cfg.seeds:
        raise ConfigError("a sweep needs at least one method, one N and one seed")
    for m in cfg.methods:
        method = get_method(m, **cfg.method_options.get(m, {}))  # fail early on unknown names/options
        check_can_run(method, m, target_given=cfg.target_unlabelled is not None)  # and on missing inputs
    check_executor(cfg.executor)
    if cfg.executor == "local":
        resolve_device(cfg.device)  # fail before loading data on a device this machine lacks (Ray: on workers)
    out = Path(cfg.out)
    data, external, extra_unlabelled = load_for_sweep(cfg)
    target = load_target_for_sweep(cfg, data, external)
    existed = folders_under(out)
    out.mkdir(parents=True, exist_ok=True)  # after the data loaded: bad data leaves no empty --out behind
    try:
        return _sweep_into(cfg, out, data, external, extra_unlabelled, target)
    except BaseException:  # a run stopped the sweep (bad input, Ctrl-C): folders it made and left empty go too
        prune_empty_dirs(out, keep=existed)
        raise


def _sweep_into(cfg: SweepConfig, out: Path, data: LoadedDataset, external: LoadedDataset | None,
                extra_unlabelled: list[Case], target: list[Case] | None = None) -> list[dict[str, Any]]:
    """``run_sweep`` once ``out`` exists: the runs not recorded yet, then the report."""
    from segsynth.data.splits import split_cases

    results_path = out / "results.jsonl"
    info = data.info
    earlier = ok_records(read_jsonl(results_path))
    done = {(r["method"], r["n_train"], r["seed"], r["test_set"]) for r in earlier}
    n_max = max(cfg.n_values)
    total = len(cfg.methods) * len(cfg.n_values) * len(cfg.seeds)
    jobs: list[tuple[str, int, int]] = []
    seed_data: dict[int, SeedData] = {}
    k = 0
    for seed in cfg.seeds:
        split = split_cases(data.cases, n_train=n_max, n_val=cfg.n_val, seed=seed, n_test=cfg.n_test)
        test_sets = [("in-domain", split.test)]
        if external is not None:
            test_sets.append((external.info.name or Path(cfg.test_data).name, external.cases))
        unlabelled = [Case(c.case_id, c.image, None, dict(c.meta)) for c in split.pool]
        labelled = split.train + split.val + split.test + (external.cases if external is not None else [])
        unlabelled += drop_labelled_ids(extra_unlabelled, labelled, cfg.unlabelled_data)
        if cfg.max_unlabelled is not None:
            unlabelled = unlabelled[: cfg.max_unlabelled]
        for n in cfg.n_values:
            for method_name in cfg.methods:
                k += 1
                if all((method_name, n, seed, name) in done for name, _ in test_sets):
                    log.info("[%d/%d] %s N=%d seed=%d: done already", k, total, method_name, n, seed)
                    continue
                jobs.append((method_name, n, seed))
                seed_data[seed] = SeedData(split.train, split.val, unlabelled, test_sets, list(target or []))
    if jobs and cfg.executor == "local":
        _warn_if_computed_elsewhere(earlier, resolve_device(cfg.device))
    _execute(cfg, info, jobs, seed_data, results_path, out, total - len(jobs), total)
    records = read_jsonl(results_path)
    if cfg.report:
        from segsynth.experiments.report import write_report

        # target-domain montages (segsynth.experiments.target_montage) first, then the prediction overlays
        samples = sorted((str(p) for p in (out / "samples").glob("*.png")),
                         key=lambda p: (not Path(p).name.startswith(TARGET_MONTAGE), p))
        write_report(records, out, title=cfg.title or f"segsynth sweep on {info.name}", baseline="none"
                     if "none" in cfg.methods else cfg.methods[0], sample_images=samples)
    return records


def _warn_if_computed_elsewhere(records: Sequence[Mapping[str, Any]], device: torch.device) -> None:
    """Log a warning when a resumed sweep's earlier (finished) runs were computed on another CPU, GPU or thread
    count than the runs about to start: their seconds are not comparable, and their Dice moves with the kernels
    (the same ``augment`` run scored 0.710 and 0.656 on two machines; benchmarks/README.md)."""
    here = compute_label(compute_description(device))
    elsewhere = {compute_label(r) for r in records} - {None, here}
    if elsewhere:
        log.warning("results.jsonl holds runs computed elsewhere (%s); the runs now starting use %s: their seconds "
                    "are not comparable and Dice moves with the kernels (--threads N to match)",
                    "; ".join(sorted(elsewhere)), here)


def _execute(cfg: SweepConfig, info, jobs: list[tuple[str, int, int]], seed_data: dict[int, SeedData],
             results_path: Path, out: Path, n_done: int, total: int) -> None:
    """Run the jobs on the configured executor; only this (driver) process appends to results.jsonl."""
    if not jobs:
        return
    run_cfg = cfg
    if cfg.executor != "local":  # parallel runs: no interleaved progress bars; the driver logs each result
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    with make_executor(cfg.executor, address=cfg.ray_address, cpus=cfg.cpus_per_run, gpus=cfg.gpus_per_run,
                       max_retries=cfg.max_retries) as ex:
        shared = {seed: ex.share(d) for seed, d in seed_data.items()}
        calls = [(run_cfg, info, m, n, seed, shared[seed], out, dict(METHODS)) for m, n, seed in jobs]
        for i, records, error in ex.run(run_job, calls):
            m, n, seed = jobs[i]
            if error is not None:  # the worker died more often than max_retries: recorded like a failed run
                records = _failed_records(_record_base(cfg, info, m, n, seed, seed_data[seed]), error,
                                          seed_data[seed].test_sets, tb="")
            for r in records:
                append_jsonl(results_path, r)
            n_done += 1
            dice = next((r.get("dice_mean") for r in records if r.get("status") == "ok"), None)
            log.info("[%d/%d] %s N=%d seed=%d: %s", n_done, total, m, n, seed,
                     f"Dice {dice:.3f}" if dice is not None else records[0].get("error", "failed"))


def run_job(cfg: SweepConfig, info, method_name: str, n: int, seed: int, data: SeedData, out: Path,
            methods: dict[str, str] | None = None) -> list[dict]:
    """One (method, N, seed) run, wherever it executes: a pure function of the data, the options and (method,
    N, seed). Global random state is seeded from the run's identity for the run's duration, so neither the
    runs before it in this process nor the executor change its numbers.

    ``methods``: the driver's method registry (methods registered at run time exist on Ray workers too).
    """
    from segsynth.utils.seed import derive_seed, seeded_scope

    if methods:
        METHODS.update(methods)
    device = resolve_device(cfg.device)
    data = _writable(data)
    train = first_n(data.train, n)
    log.info("%s N=%d seed=%d: training on %d cases", method_name, n, seed, len(train))
    with seeded_scope(derive_seed("sweep-run", method_name, n, seed)):
        return _one_run(cfg, info, method_name, n, seed, train, data.val, data.unlabelled, data.test_sets,
                        device, out, target=data.target)


def _writable(data: SeedData) -> SeedData:
    """Cases read from Ray's object store hold read-only arrays; runs get their own writable copies."""
    def fix(cases: list[Case]) -> list[Case]:
        if all(c.image.flags.writeable and (c.mask is None or c.mask.flags.writeable) for c in cases):
            return cases
        return [Case(c.case_id, np.array(c.image), None if c.mask is None else np.array(c.mask), dict(c.meta))
                for c in cases]

    return SeedData(fix(data.train), fix(data.val), fix(data.unlabelled),
                    [(name, fix(cases)) for name, cases in data.test_sets], fix(data.target))


def _record_base(cfg: SweepConfig, info, method_name: str, n: int, seed: int, data: SeedData) -> dict[str, Any]:
    train = first_n(data.train, n)
    return {"dataset": info.name, "method": method_name, "n_train": n, "seed": seed, "segmenter": cfg.segmenter,
            "labels": {str(k): v for k, v in info.labels.items() if k != 0}, "n_train_cases": len(train),
            "train_ids": unit_ids(train), "val_ids": unit_ids(data.val),
            **({"target_data": str(cfg.target_unlabelled), "n_target": len(data.target)}
               if cfg.target_unlabelled is not None else {})}


def _failed_records(base: dict[str, Any], e: BaseException, test_sets, tb: str) -> list[dict[str, Any]]:
    return [{**base, "test_set": name, "status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": tb}
            for name, _ in test_sets]


def unit_ids(cases: Sequence[Case]) -> list[str]:
    """The distinct volumes (or cases) behind a list of cases, sorted: a record's ``train_ids`` / ``val_ids``."""
    return sorted({str(c.meta.get("volume_id", c.case_id)) for c in cases})


def _one_run(cfg: SweepConfig, info, method_name: str, n: int, seed: int, train: list[Case], val: list[Case],
             unlabelled: list[Case], test_sets, device: torch.device, out: Path,
             target: list[Case] | None = None) -> list[dict]:
    from dataclasses import replace

    from segsynth.experiments.overlays import save_overlay

    target = list(target or [])
    base = _record_base(cfg, info, method_name, n, seed, SeedData(train, val, unlabelled, test_sets, target))
    workdir = out / "runs" / run_key(method_name, n, seed)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    try:
        method = get_method(method_name, **cfg.method_options.get(method_name, {}))
        ctx = MethodContext(info=info, train=train, val=val, unlabelled=unlabelled, target=target,
                            segmenter=cfg.segmenter,
                            segmenter_kwargs=dict(cfg.segmenter_kwargs),
                            train_config=replace(cfg.train, seed=seed), seed=seed, device=device,
                            workdir=workdir, shared_dir=out / "runs" / SHARED,
                            options=cfg.method_options.get(method_name, {}))
        result = method.run(ctx)
    except (KeyboardInterrupt, DataError, ConfigError):
        raise
    except Exception as e:  # one failed method must not sink the sweep; it is recorded and reported
        log.error("%s N=%d seed=%d failed: %s", method_name, n, seed, e)
        return _failed_records(base, e, test_sets, traceback.format_exc()[-2000:])
    # a resumed run's cost includes what the interrupted process before it spent (nnunet reads it from its logs)
    earlier = float(getattr(result, "earlier_seconds", 0.0) or 0.0)
    train_seconds = time.perf_counter() - t0 + earlier
    records = []
    for name, cases in test_sets:
        per_case = []
        # overlays show the test cases with the most foreground (an empty slice says little)
        show = set(sorted(range(len(cases)), key=lambda i: -int((cases[i].mask > 0).sum()))[: cfg.sample_predictions])
        if callable(getattr(result, "predict_cases", None)):  # a method with its own predictor (nnunet)
            preds = result.predict_cases(cases)
        else:
            preds = predict_many(result.model, [c.image for c in cases], patch_size=cfg.train.patch_size,
                                 device=device)
        for i, (c, pred) in enumerate(zip(cases, preds)):
            m = case_metrics(pred, c.mask, info.labels, spacing=case_spacing(c))
            vid = c.meta.get("volume_id")  # slices of one volume are one unit for the paired tests
            per_case.append({"case_id": c.case_id, **({"volume_id": str(vid)} if vid is not None else {}), **m})
            if seed == cfg.seeds[0] and n in (min(cfg.n_values), max(cfg.n_values)) and i in show:
                save_overlay(c.image, c.mask, pred, out / "samples" / f"{name}_{method_name}_n{n}_{c.case_id}.png",
                             title=f"{method_name}, N={n}, {name}: {c.case_id}, Dice {m['dice_mean']:.3f}",
                             labels=info.labels)
        dice = [p["dice_mean"] for p in per_case]
        hd = [p["hd95_mean"] for p in per_case if p.get("hd95_mean") is not None]
        records.append({**base, "test_set": name, "status": "ok", "val_dice": result.best_val_dice,
                        "best_step": result.best_step, "train_seconds": train_seconds,
                        "seconds": time.perf_counter() - t0 + earlier,
                        # a method that trains in a subprocess (nnunet) reports that process's peak itself
                        "peak_memory_mb": max(peak_memory_mb(device), result.peak_memory_mb or 0.0),
                        **compute_description(device), "dice_mean": float(np.mean(dice)) if dice else None,
                        "hd95_mean": float(np.mean(hd)) if hd else None, "n_test": len(cases),
                        **({"source_statistics": stats} if (stats := getattr(result, "source_statistics", None)) else {}),
                        **(getattr(result, "record_fields", None) or {}),  # e.g. nnunet_budget
                        "per_case": per_case})
    if callable(getattr(method, "montage_cases", None)) and seed == cfg.seeds[0] and n == max(cfg.n_values):
        _target_montage(cfg, method, ctx, result, out / "samples" / f"{TARGET_MONTAGE}{method_name}_n{n}.png")
    if cfg.fidelity:  # after the timings: its cost (maybe one reference training) is recorded on its own
        fid = _fidelity(cfg, method, ctx, result, out, run_key(method_name, n, seed) if seed == cfg.seeds[0] else None)
        if fid is not None:
            records = [{**r, "label_fidelity": fid} for r in records]
    return records


TARGET_MONTAGE = "target_montage_"  # file names of the target methods' montages in <out>/samples


def _target_montage(cfg: SweepConfig, method, ctx: MethodContext, result, path: Path) -> None:
    """The montage of a target method's run (target images, pairs painted in their style, source pairs); a
    failure is logged, never fatal."""
    from segsynth.experiments.target_montage import save_target_montage

    try:
        save_target_montage(method.montage_cases(ctx, result), path, spatial_dims=ctx.info.spatial_dims,
                            device=ctx.device, patch_size=cfg.train.patch_size,
                            title=f"{method.name}, N={len(ctx.train)}: target images, pairs painted in their style, "
                                  "source pairs")
    except (KeyboardInterrupt, DataError, ConfigError):
        raise
    except Exception as e:
        log.error("montage of %s failed: %s", ctx.workdir, e)


def _fidelity(cfg: SweepConfig, method, ctx: MethodContext, result, out: Path, montage: str | None) -> dict | None:
    """The ``label_fidelity`` field of a generator run (None otherwise); a failure is recorded, never fatal.

    An ``augment`` run is kept as its cell's reference even in a sweep without generators (a saved model, about
    2 MB at 64²), so that the same sweep extended by a generator method later, or another sweep that shares
    the cache, does not train it again."""
    from segsynth.evaluate.fidelity import REFERENCE_METHOD, makes_synthetic_pairs, sweep_fidelity

    if method.name != REFERENCE_METHOD and not any(
            makes_synthetic_pairs(get_method(m, **cfg.method_options.get(m, {}))) for m in cfg.methods):
        return None  # no generator in this sweep: nothing to score
    try:
        return sweep_fidelity(method, ctx, result, out=out, augment_options=cfg.method_options.get("augment", {}),
                              n_pairs=cfg.fidelity_pairs, montage_name=montage)
    except (KeyboardInterrupt, DataError, ConfigError):
        raise
    except Exception as e:
        log.error("label fidelity of %s failed: %s", ctx.workdir, e)
        return {"error": f"{type(e).__name__}: {e}"}


def print_summary(records: list[dict[str, Any]], out: Path) -> None:
    """The terminal view of a sweep: a Dice table per test set, then where the report is."""
    from segsynth.experiments.report import format_table
    from segsynth.experiments.verdict import VERDICT_RULE, verdict_sentences

    print(format_table(records))
    sentences = verdict_sentences(records)
    if sentences:
        print(f"\nVerdict ({VERDICT_RULE}):")
        print("\n".join(f"  {t}" for t in sentences))
    report = Path(out) / "report.html"
    if report.exists():
        print(f"\nHTML report: {report}")
    print(f"results: {Path(out) / 'results.jsonl'}")
