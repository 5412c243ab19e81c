"""segsynth command-line app. Each command parses its arguments and calls the library.

Errors in the user's data or options print one line naming the file and the problem and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning (a spinning pool beside another busy process made training
# 20-30x slower); OpenMP reads this once, when torch loads, so it is set before anything imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from segsynth.errors import ConfigError, SegsynthError  # noqa: E402

log = logging.getLogger("segsynth")

EPILOG = "Exit codes: 0 success, 1 unexpected failure, 2 bad input or options (the message names the file)."


# ----------------------------------------------------------------------------- help
def _shows_default(action: argparse.Action) -> bool:
    d = action.default
    return bool(action.option_strings) and not (d is None or d is False or d == [] or d is argparse.SUPPRESS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless the help text already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _shows_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults and may end with sections computed only when shown
    (``add_help_section(fn)``: e.g. the option list of a method, without importing it for every command)."""

    def __init__(self, *args: Any, **kw: Any):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)
        self._help_sections: list[Any] = []

    def add_help_section(self, fn: Any) -> None:
        self._help_sections.append(fn)

    def format_help(self) -> str:
        for action in self._actions:  # argparse shows nothing for an option without help: show its default
            if action.help is None and _shows_default(action):
                action.help = "(default: %(default)s)"
        return super().format_help() + "".join(f"\n{fn().rstrip()}\n" for fn in self._help_sections)


# ----------------------------------------------------------------------------- shared options
def add_common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, initialisation, sampling)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: the usable cores minus the load of other processes, "
                        "at least 1; or OMP_NUM_THREADS when set); the log says what was chosen")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    if out:
        p.add_argument("--out", type=Path, required=True, help="output folder (created; written atomically)")


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and preprocessing")
    g.add_argument("--data", type=Path, required=True,
                   help="dataset folder: MSD/nnU-Net (imagesTr, labelsTr, dataset.json), a dataset.json with "
                        "'pairs', or images/ + masks/ matched by file name")
    g.add_argument("--dims", type=int, choices=(2, 3), default=None,
                   help="work in 2D or 3D (default: the data's own; 2 with 3D volumes takes 2D slices)")
    g.add_argument("--size", type=int, default=128, help="2D working size in pixels (default 128)")
    g.add_argument("--shape-3d", type=str, default=None,
                   help="3D working shape D,H,W: volumes are centre-cropped/padded to it (default: native)")
    g.add_argument("--patch", type=str, default=None, help="3D training patch D,H,W (sliding window at test time)")
    g.add_argument("--normalise", default="auto", choices=("auto", "zscore", "percentile", "unit"),
                   help="intensity normalisation (auto: z-score for MRI/CT, [0,1] for photos and X-ray)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("segmenter training")
    g.add_argument("--segmenter", default="unet", choices=("unet", "dynunet", "deeplab"))
    g.add_argument("--unet-features", type=str, default=None,
                   help="BasicUNet features, 6 comma-separated ints (default 32,32,64,128,256,32)")
    g.add_argument("--steps", type=int, default=500, help="training steps (batches)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--val-every", type=int, default=50, help="validate (and checkpoint) every this many steps")
    g.add_argument("--n-val", type=int, default=2, help="labelled cases held out for validation/model selection")
    g.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="training and validation precision of the segmenter and of the generators a method trains "
                        "(GenSeg's GAN steps and rendering, brainSPADE's networks and sampling; GenSeg's "
                        "architecture hypergradient stays fp32): auto = bf16 autocast where the device runs it "
                        "fast (CUDA with bf16; a CPU with AMX/avx512_bf16), fp32 elsewhere; bf16 forces it (slow "
                        "on CPUs without those); losses stay fp32 (default fp32)")
    g.add_argument("--amp", action="store_true", help="older switch: bf16 autocast on CUDA only")
    g.add_argument("--method-opt", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. augment.kind=rotate or separate_aug.real_fraction=0.75 (repeatable); "
                        "every generator method takes real_fraction, augment_real, min_fidelity and "
                        "synthetic_until (a fraction of the steps with synthetic pairs, then real pairs only); "
                        "`segsynth methods` lists the methods, `segsynth methods NAME` a method's options and "
                        "their defaults; an option the method does not take is an error")


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from e


def spec_from_args(a: argparse.Namespace):
    from segsynth.data.preprocess import PreprocessSpec

    return PreprocessSpec(spatial_dims=a.dims, size=a.size, shape_3d=_ints(a.shape_3d), normalise=a.normalise)


def _positive(a: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(a, name, None)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {v}")


def train_config_from_args(a: argparse.Namespace):
    from segsynth.segment.train import TrainConfig

    _positive(a, "steps", "batch_size", "lr", "val_every")
    if getattr(a, "n_val", 0) is not None and getattr(a, "n_val", 0) < 0:
        raise ConfigError(f"--n-val must be >= 0, got {a.n_val}")
    return TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, val_every=a.val_every,
                       patch_size=_ints(a.patch), seed=a.seed, amp=a.amp, progress=not a.quiet,
                       precision=getattr(a, "precision", "fp32"))


def segmenter_kwargs_from_args(a: argparse.Namespace) -> dict[str, Any]:
    return {"features": _ints(a.unet_features)} if a.segmenter == "unet" and a.unet_features else {}


def parse_method_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """"genseg.n_synthetic=200" -> {"genseg": {"n_synthetic": 200}} (values parsed as JSON when possible)."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--method-opt {item!r}: expected METHOD.KEY=VALUE")
        key, value = item.split("=", 1)
        method, name = key.split(".", 1)
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[name] = parsed
    return out


# ----------------------------------------------------------------------------- commands
def cmd_check_data(a: argparse.Namespace) -> int:
    from segsynth.data.check import check_dataset
    from segsynth.data.preprocess import PreprocessSpec

    spec = PreprocessSpec(spatial_dims=a.dims, size=a.size) if (a.dims or a.size) else None
    report = check_dataset(a.folder, spec)
    print(report.format())
    return 0 if not report.problems else 2


def check_n(n: int, data: Path) -> None:
    """--n: labelled training cases, at least 1 (the message names the dataset)."""
    if n < 1:
        raise ConfigError(f"{data}: --n {n}: at least 1 labelled training case is needed")


def check_out(path: Path, *, overwrite: bool | None = None, resumable: tuple[str, ...] = ()) -> None:
    """Refuse an unusable --out before any work: an existing file, a place where no folder can be created,
    or (when ``overwrite`` is not None) an existing non-empty folder holding more than the ``resumable``
    entries of an interrupted run, unless --overwrite. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is a file, not a folder")
    base = path
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"--out {path}: cannot create it, {base} is a file, not a folder")
    import tempfile

    try:
        probe = tempfile.mkdtemp(prefix=".segsynth-write-test-", dir=base)
        os.rmdir(probe)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write in {base} ({e.strerror or e})") from e
    if overwrite is False and path.is_dir():
        extra = sorted(p.name for p in path.iterdir() if p.name not in resumable)
        if extra:
            raise ConfigError(f"--out {path}: folder exists and is not empty ({', '.join(extra[:3])}"
                              f"{' ...' if len(extra) > 3 else ''}); pass --overwrite to replace it, or choose "
                              "another folder")


def replace_outputs(out: Path, names: tuple[str, ...], keep: tuple[str, ...] = ()) -> None:
    """--overwrite: remove this command's previous outputs ``names`` from ``out`` (so that no stale model sits
    beside new metrics); other entries are left alone, and named in a warning."""
    import shutil

    out = Path(out)
    if not out.is_dir():
        return
    for name in names:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    other = sorted(p.name for p in out.iterdir() if p.name not in names + keep)
    if other:
        log.warning("--overwrite: left in %s what this command did not write: %s%s", out, ", ".join(other[:5]),
                    " ..." if len(other) > 5 else "")


def cmd_sweep(a: argparse.Namespace) -> int:
    from segsynth.experiments.sweep import SweepConfig, print_summary, run_sweep

    seeds = list(range(a.seeds)) if a.seed_list is None else list(_ints(a.seed_list))
    for n in _ints(a.n) or ():
        check_n(n, a.data)
    cfg = SweepConfig(data=a.data, out=a.out, methods=[m.strip() for m in a.methods.split(",") if m.strip()],
                      n_values=list(_ints(a.n)), seeds=seeds, test_data=a.test_data, unlabelled_data=a.unlabelled,
                      target_unlabelled=a.target_unlabelled,
                      n_val=a.n_val, n_test=a.n_test, max_unlabelled=a.max_unlabelled, segmenter=a.segmenter,
                      segmenter_kwargs=segmenter_kwargs_from_args(a), spec=spec_from_args(a),
                      train=train_config_from_args(a), method_options=parse_method_options(a.method_opt),
                      device=a.device, title=a.title, fidelity=a.fidelity, fidelity_pairs=a.fidelity_pairs,
                      **_sweep_executor(a))
    records = run_sweep(cfg)
    print_summary(records, a.out)
    return 0


def _sweep_executor(a: argparse.Namespace) -> dict[str, Any]:
    from segsynth.experiments.executors import executor_options

    o = executor_options(a, "run")
    return {"executor": o["name"], "ray_address": o["address"], "cpus_per_run": o["cpus"], "gpus_per_run": o["gpus"]}


def cmd_demo(a: argparse.Namespace) -> int:
    from segsynth.experiments.demo import DemoConfig, run_demo

    # progress bars only on a terminal (segsynth.utils.progress decides, for every bar)
    run_demo(DemoConfig(out=a.out, device=a.device, seed=a.seed, steps=a.steps, progress=not a.quiet))
    return 0


def _prepare_split(a: argparse.Namespace):
    from segsynth.data.dataset import load_dataset
    from segsynth.data.splits import split_cases

    spec = spec_from_args(a)
    data = load_dataset(a.data, spec, progress=not getattr(a, "quiet", False))
    split = split_cases(data.cases, n_train=a.n, n_val=a.n_val, seed=a.seed, n_test=a.n_test)
    return data, split, spec


def cmd_train(a: argparse.Namespace) -> int:
    from segsynth.generators import get_method
    from segsynth.generators.base import MethodContext, check_can_run
    from segsynth.segment.model_io import save_segmenter
    from segsynth.segment.run_summary import model_record, run_summary, score_test_cases
    from segsynth.utils.device import resolve_device
    from segsynth.utils.files import write_json

    check_n(a.n, a.data)
    check_out(a.out, overwrite=a.overwrite, resumable=("work",))
    opts = parse_method_options(a.method_opt).get(a.method, {})
    method = get_method(a.method, **opts)
    check_can_run(method, a.method, target_given=a.target_unlabelled is not None)  # before any data is read
    data, split, spec = _prepare_split(a)
    device = resolve_device(a.device)
    target = _train_target(a, data, spec)
    ctx = MethodContext(info=data.info, train=split.train, val=split.val,
                        unlabelled=[c.__class__(c.case_id, c.image, None, c.meta) for c in split.pool],
                        target=target,
                        segmenter=a.segmenter, segmenter_kwargs=segmenter_kwargs_from_args(a),
                        train_config=train_config_from_args(a), seed=a.seed, device=device,
                        workdir=a.out / "work", options=opts)
    result = method.run(ctx)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes
        return 0
    saveable = hasattr(result.model, "segsynth_config")
    if a.overwrite:  # the previous run's outputs go only now that the new ones exist to replace them
        replace_outputs(a.out, ("model", "test_metrics", "summary.json"), keep=("work",))
    if saveable:
        save_segmenter(result.model, a.out / "model", data.info, spec, segmenter_kwargs=ctx.segmenter_kwargs,
                       extra=model_record(a.method, a.n, a.seed, result, split, device))
    else:  # e.g. single-atlas segmentation: a registration model plus an atlas, not a segmenter network
        log.warning("method %s returns a %s, not a segmenter network: no model/ folder is written "
                    "(its own command saves its models)", a.method, type(result.model).__name__)
    test = score_test_cases(result.model, split, data.info.labels, a.out / "test_metrics",
                            ctx.train_config.patch_size, device)
    # one file with what a run cost and scored, as segsynth genseg and the sweep records say it
    write_json(a.out / "summary.json", run_summary(a.method, a.n, a.seed, result, split, device, opts, test))
    scored = f"; test Dice {test['dice_mean']:.3f} over {test['n_cases']} cases" if test else "; no test cases"
    print(f"trained {a.method} on {len(split.train)} cases: best validation Dice {result.best_val_dice:.3f}{scored}")
    print(f"model: {a.out / 'model' if saveable else '(not saved)'}   metrics: {a.out / 'test_metrics'}   "
          f"summary: {a.out / 'summary.json'}")
    return 0


def _train_target(a: argparse.Namespace, data, spec) -> list:
    """``segsynth train --target-unlabelled``: the target images, refused when any is a case of --data (whose
    held-out cases are tested): ``segsynth.data.target.check_no_leak``."""
    from segsynth.data.target import check_no_leak, load_target

    if a.target_unlabelled is None:
        return []
    target = load_target(a.target_unlabelled, spec, data.info, progress=not a.quiet)
    check_no_leak(target, a.target_unlabelled, [(a.data, data.cases, False)])  # another site: pixels only
    return target


def cmd_evaluate(a: argparse.Namespace) -> int:
    import numpy as np

    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.evaluate.metrics import evaluate_cases, write_metrics
    from segsynth.segment.inference import predict_cases
    from segsynth.segment.model_io import check_input_fits, load_segmenter
    from segsynth.utils.device import resolve_device

    device = resolve_device(a.device)
    model, config = load_segmenter(a.model, device)
    spec = PreprocessSpec(**config["spec"])
    data = load_dataset(a.data, spec, progress=not a.quiet)
    check_input_fits(config, data.info.extra.get("source_spatial_dims", data.info.spatial_dims),
                     data.info.in_channels, a.data, a.model)
    labels = {int(k): v for k, v in config["info"]["labels"].items()}
    if data.info.num_classes != len(labels):
        raise ConfigError(f"{a.data}: {data.info.num_classes} classes, but the model predicts {len(labels)}")
    patch = config.get("patch_size")
    preds = predict_cases(model, data.cases, patch_size=patch, device=device)
    rows = evaluate_cases(preds, data.cases, labels)
    write_metrics(rows, a.out)
    print(f"Dice {np.mean([r['dice_mean'] for r in rows]):.3f} over {len(rows)} cases -> {a.out}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from segsynth.segment.predict_files import predict_folder

    check_out(a.out, overwrite=a.overwrite)
    written = predict_folder(a.model, a.input, a.out, device=a.device, progress=not a.quiet)
    print(f"wrote {len(written)} predictions to {a.out}")
    return 0


# ----------------------------------------------------------------------------- parser
TARGET_HELP = ("folder of unlabelled images of the deployment site (another hospital, scanner or camera): the "
               "*_target methods adapt to it (`segsynth methods`); any of its images that is also a case of --data "
               "or --test-data (same id, or same decoded pixels) is refused; `segsynth split-folder` splits a "
               "labelled folder of that site into an unlabelled part and a test part")


def _command(sub, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:  # noqa: A002
    """A sub-command whose --help shows its one-line description too."""
    return sub.add_parser(name, help=help, description=help, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="segsynth",
        description="Train segmenters from 1-50 labelled scans with synthetic paired data, and measure on real "
                    "held-out data whether the synthetic data helped.",
        epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    s = _command(sub, "demo", help="the main job at small scale on the sample shipped with the package (about 100 s "
                                    "on 2 CPU cores with AVX-512, 60-160 s with AVX2 only): GenSeg fits a generator, its pairs train a segmenter, compared "
                                    "with augment and none on held-out volumes; prints the Dice table, label "
                                    "fidelity and the computed verdict, writes an HTML report and a montage of "
                                    "synthetic pairs beside real ones", epilog=EPILOG)
    add_common(s, out=False)
    s.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    s.add_argument("--steps", type=int, default=100, help="segmenter training steps per run (default 100)")
    s.set_defaults(func=cmd_demo)

    s = _command(sub, "check-data", help="validate a dataset folder and print a summary (cases, sizes, classes, "
                                          "problems); exit 2 when problems are found", epilog=EPILOG)
    s.add_argument("folder", type=Path, help="the dataset folder to check")
    s.add_argument("--dims", type=int, choices=(2, 3), default=None,
                   help="also check loading as 2D slices (2) or 3D volumes (3)")
    s.add_argument("--size", type=int, default=None, help="also check resizing to this 2D working size")
    s.set_defaults(func=cmd_check_data)

    s = _command(sub, "train", help="train one segmenter with one method on N labelled cases, save it, and "
                                     "evaluate it on the held-out cases", epilog=EPILOG)
    add_common(s)
    add_data_options(s)
    add_train_options(s)
    s.add_argument("--method", default="augment", help="method name (see `segsynth methods`)")
    s.add_argument("--n", type=int, required=True, help="number of labelled training cases")
    s.add_argument("--n-test", type=int, default=None, help="test cases (default: all not used for training)")
    s.add_argument("--target-unlabelled", type=Path, default=None, metavar="DIR", help=TARGET_HELP)
    s.add_argument("--overwrite", action="store_true",
                   help="replace the results in an existing non-empty --out (an interrupted run in --out "
                        "resumes without it)")
    s.set_defaults(func=cmd_train)

    s = _command(sub, "evaluate", help="Dice and HD95 of a saved model on a labelled dataset folder",
                       epilog=EPILOG)
    add_common(s)
    s.add_argument("--model", type=Path, required=True, help="model folder written by `segsynth train`")
    s.add_argument("--data", type=Path, required=True, help="labelled dataset folder")
    s.set_defaults(func=cmd_evaluate)

    s = _command(sub, "predict", help="segment images with a saved model; writes masks in the input's format "
                                       "(NIfTI keeps the affine; PNG keeps the size)", epilog=EPILOG)
    add_common(s)
    s.add_argument("--model", type=Path, required=True, help="model folder written by `segsynth train`")
    s.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    s.set_defaults(func=cmd_predict)

    s = _command(sub, "sweep", help="low-data sweep: methods x N x seeds, Dice/HD95 on held-out data, paired "
                                     "tests, learning curves, HTML report; resumable", epilog=EPILOG)
    add_common(s)
    add_data_options(s)
    add_train_options(s)
    s.add_argument("--methods", default="none,augment", help="comma-separated method names (see `segsynth methods`)")
    s.add_argument("--n", default="1,2,4,8", help="comma-separated numbers of labelled training cases")
    s.add_argument("--seeds", type=int, default=3, help="number of seeds (0..K-1)")
    s.add_argument("--seed-list", default=None, help="explicit comma-separated seeds (overrides --seeds)")
    s.add_argument("--test-data", type=Path, default=None,
                   help="external labelled folder with the same classes: evaluate out of domain too")
    s.add_argument("--unlabelled", type=Path, default=None, help="folder of unlabelled images for methods that use them")
    s.add_argument("--target-unlabelled", type=Path, default=None, metavar="DIR", help=TARGET_HELP)
    s.add_argument("--fidelity", action=argparse.BooleanOptionalAction, default=True,
                   help="label fidelity of generator methods' pairs: Dice of the cell's augment model on the "
                        "synthetic images vs their masks (reuses the sweep's augment run when it ran first, else "
                        "trains one per N and seed; default on)")
    s.add_argument("--fidelity-pairs", type=int, default=100, help="synthetic pairs scored per generator run")
    s.add_argument("--max-unlabelled", type=int, default=None)
    s.add_argument("--n-test", type=int, default=None, help="in-domain test cases (default: all unused cases)")
    s.add_argument("--title", default=None, help="report title")
    from segsynth.experiments.executors import add_executor_options

    add_executor_options(s, "run")
    s.set_defaults(func=cmd_sweep)

    s = _command(sub, "methods", help="list the methods a sweep can compare (`segsynth sweep --methods ...`), "
                                      "each with a one-line description; with NAMEs, each method's options "
                                      "(`--method-opt NAME.KEY=VALUE`) with their defaults and what they mean")
    s.add_argument("names", nargs="*", metavar="NAME", help="methods to describe in full (default: list them all)")
    s.set_defaults(func=cmd_methods)

    from segsynth.commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return p


def _one_line(method: Any) -> str:
    return method.description or (type(method).__doc__ or "").strip().splitlines()[0]


def cmd_methods(a: argparse.Namespace) -> int:
    import json

    from segsynth.generators import METHODS, get_method

    if not a.names:
        for name in METHODS:
            print(f"{name:18s} {_one_line(get_method(name))}")
        print("\n`segsynth methods NAME` shows a method's options and their defaults.")
        return 0
    methods = [get_method(name) for name in a.names]  # an unknown name fails before anything is printed
    for i, (name, m) in enumerate(zip(a.names, methods, strict=True)):
        print(("\n" if i else "") + f"{name}: {_one_line(m)}")
        values = m.option_values()
        if values:
            print(f"\noptions (--method-opt {name}.KEY=VALUE; auto: chosen at run time by the method or the run):")
            width = max(len(k) for k in values)
            for key in sorted(values):
                v = values[key]
                shown = ("required" if key in m.required_options else "auto") if v is None \
                    else json.dumps(list(v) if isinstance(v, tuple) else v)
                print(f"  {key:{width}s}  {shown}")
        else:
            print("\noptions: none")
        for doc in dict.fromkeys(d.strip() for d in m.option_docs() if d and d.strip()):  # each text once
            print("\n" + doc)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if getattr(a, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if isinstance(getattr(a, "out", None), Path):
            check_out(a.out)
        if hasattr(a, "threads"):
            from segsynth.utils.threads import apply_threads, choose_threads

            apply_threads(choose_threads(a.threads))
        if getattr(a, "seed", None) is not None:
            from segsynth.utils.seed import seed_everything

            seed_everything(a.seed)
        return int(a.func(a) or 0)
    except SegsynthError as e:  # one line, even where a message quotes a library's multi-line text
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"segsynth {a.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # whoever read stdout has gone (`segsynth methods genseg | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail again
        return 141  # 128 + SIGPIPE, what a shell tool killed by the closed pipe would return
    except OSError as e:  # a file or folder the system refused (permissions, disk full, ...): one line too
        where = f"{e.filename}: " if e.filename else ""
        print(f"segsynth {a.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
