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

from segsynth.errors import ConfigError, SegsynthError

log = logging.getLogger("segsynth")

EPILOG = "Exit codes: 0 success, 1 unexpected failure, 2 bad input or options (the message names the file)."


# ----------------------------------------------------------------------------- shared options
def add_common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, initialisation, sampling)")
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
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    g.add_argument("--method-opt", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. augment.kind=rotate or genseg.n_synthetic=200 (repeatable)")


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


def train_config_from_args(a: argparse.Namespace):
    from segsynth.segment.train import TrainConfig

    return TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, val_every=a.val_every,
                       patch_size=_ints(a.patch), seed=a.seed, amp=a.amp, progress=not a.quiet)


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


def cmd_sweep(a: argparse.Namespace) -> int:
    from segsynth.experiments.sweep import SweepConfig, print_summary, run_sweep

    seeds = list(range(a.seeds)) if a.seed_list is None else list(_ints(a.seed_list))
    cfg = SweepConfig(data=a.data, out=a.out, methods=[m.strip() for m in a.methods.split(",") if m.strip()],
                      n_values=list(_ints(a.n)), seeds=seeds, test_data=a.test_data, unlabelled_data=a.unlabelled,
                      n_val=a.n_val, n_test=a.n_test, max_unlabelled=a.max_unlabelled, segmenter=a.segmenter,
                      segmenter_kwargs=segmenter_kwargs_from_args(a), spec=spec_from_args(a),
                      train=train_config_from_args(a), method_options=parse_method_options(a.method_opt),
                      device=a.device, title=a.title)
    records = run_sweep(cfg)
    print_summary(records, a.out)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.data.sample import sample_path
    from segsynth.experiments.sweep import SweepConfig, print_summary, run_sweep
    from segsynth.segment.train import TrainConfig

    data = sample_path()
    print(f"segsynth demo: hippocampus MRI sample shipped with the package ({data}),\n"
          f"2D slices at 64x64; U-Net trained on 1, 2 and 4 labelled volumes, without and with classical\n"
          f"augmentation, 2 seeds; tested on held-out volumes. Output: {a.out}\n")
    cfg = SweepConfig(data=data, out=a.out, methods=["none", "augment"], n_values=[1, 2, 4], seeds=[0, 1],
                      n_val=2, n_test=8, segmenter="unet", segmenter_kwargs={"features": (16, 16, 32, 64, 128, 16)},
                      spec=PreprocessSpec(spatial_dims=2, size=64), device=a.device,
                      train=TrainConfig(steps=a.steps, batch_size=16, lr=3e-3, val_every=max(1, a.steps // 4),
                                        seed=a.seed, progress=not a.quiet),
                      title="segsynth demo: hippocampus (shipped sample), 2D slices")
    records = run_sweep(cfg)
    print_summary(records, a.out)
    return 0


def _prepare_split(a: argparse.Namespace):
    from segsynth.data.dataset import load_dataset
    from segsynth.data.splits import split_cases

    spec = spec_from_args(a)
    data = load_dataset(a.data, spec, progress=not getattr(a, "quiet", False))
    split = split_cases(data.cases, n_train=a.n, n_val=a.n_val, seed=a.seed, n_test=a.n_test)
    return data, split, spec


def cmd_train(a: argparse.Namespace) -> int:
    from segsynth.evaluate.metrics import evaluate_cases, write_metrics
    from segsynth.generators import get_method
    from segsynth.generators.base import MethodContext
    from segsynth.segment.inference import predict_cases
    from segsynth.segment.model_io import save_segmenter
    from segsynth.utils.device import resolve_device

    data, split, spec = _prepare_split(a)
    opts = parse_method_options(a.method_opt).get(a.method, {})
    method = get_method(a.method, **opts)
    device = resolve_device(a.device)
    ctx = MethodContext(info=data.info, train=split.train, val=split.val,
                        unlabelled=[c.__class__(c.case_id, c.image, None, c.meta) for c in split.pool],
                        segmenter=a.segmenter, segmenter_kwargs=segmenter_kwargs_from_args(a),
                        train_config=train_config_from_args(a), seed=a.seed, device=device,
                        workdir=a.out / "work", options=opts)
    result = method.run(ctx)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes
        return 0
    saveable = hasattr(result.model, "segsynth_config")
    if saveable:
        save_segmenter(result.model, a.out / "model", data.info, spec, segmenter_kwargs=ctx.segmenter_kwargs,
                       extra={"method": a.method, "n_train": a.n, "seed": a.seed, "val_dice": result.best_val_dice,
                              "train_cases": [c.case_id for c in split.train]})
    else:  # e.g. single-atlas segmentation: a registration model plus an atlas, not a segmenter network
        log.warning("method %s returns a %s, not a segmenter network: no model/ folder is written "
                    "(its own command saves its models)", a.method, type(result.model).__name__)
    preds = predict_cases(result.model, split.test, patch_size=ctx.train_config.patch_size, device=device)
    rows = evaluate_cases(preds, split.test, data.info.labels)
    write_metrics(rows, a.out / "test_metrics")
    import numpy as np

    print(f"trained {a.method} on {len(split.train)} cases: best validation Dice {result.best_val_dice:.3f}; "
          f"test Dice {np.mean([r['dice_mean'] for r in rows]):.3f} over {len(rows)} cases")
    print(f"model: {a.out / 'model' if saveable else '(not saved)'}   metrics: {a.out / 'test_metrics'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    import numpy as np

    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.evaluate.metrics import evaluate_cases, write_metrics
    from segsynth.segment.inference import predict_cases
    from segsynth.segment.model_io import load_segmenter
    from segsynth.utils.device import resolve_device

    device = resolve_device(a.device)
    model, config = load_segmenter(a.model, device)
    spec = PreprocessSpec(**config["spec"])
    data = load_dataset(a.data, spec, progress=not a.quiet)
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

    written = predict_folder(a.model, a.input, a.out, device=a.device, progress=not a.quiet)
    print(f"wrote {len(written)} predictions to {a.out}")
    return 0


# ----------------------------------------------------------------------------- parser
def _command(sub, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:  # noqa: A002
    """A sub-command whose --help shows its one-line description too."""
    return sub.add_parser(name, help=help, description=help, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segsynth",
        description="Train segmenters from 1-50 labelled scans with synthetic paired data, and measure on real "
                    "held-out data whether the synthetic data helped.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = _command(sub, "demo", help="run a small sweep on the sample shipped with the package (about 3-5 min on "
                                    "2 CPU cores), print a Dice table and write an HTML report", epilog=EPILOG)
    add_common(s, out=False)
    s.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    s.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
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
    s.add_argument("--max-unlabelled", type=int, default=None)
    s.add_argument("--n-test", type=int, default=None, help="in-domain test cases (default: all unused cases)")
    s.add_argument("--title", default=None, help="report title")
    s.set_defaults(func=cmd_sweep)

    s = _command(sub, "methods", help="list the methods a sweep can compare (`segsynth sweep --methods ...`), "
                                      "each with a one-line description")
    s.set_defaults(func=cmd_methods)

    from segsynth.commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return p


def cmd_methods(a: argparse.Namespace) -> int:
    from segsynth.generators import METHODS, get_method

    for name in METHODS:
        m = get_method(name)
        print(f"{name:18s} {m.description or (type(m).__doc__ or '').strip().splitlines()[0]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if getattr(a, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if getattr(a, "seed", None) is not None:
        from segsynth.utils.seed import seed_everything

        seed_everything(a.seed)
    try:
        return int(a.func(a) or 0)
    except SegsynthError as e:
        print(f"segsynth {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
