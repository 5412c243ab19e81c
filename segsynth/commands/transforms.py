"""CLI: learned transforms (fit, synthesize), domain randomisation, pretraining and fine-tuning.

    segsynth transforms-fit        --data DIR [--atlas ID] [--unlabelled DIR] --out MODEL_DIR
    segsynth transforms-synthesize --model MODEL_DIR --n 200 [--rand-aug] --out DATASET_DIR
    segsynth domain-rand           --data DIR --n 200 --out DATASET_DIR
    segsynth pretrain              --data DIR1,DIR2 [--domain-rand 0.3] --out PRETRAIN_DIR
    segsynth finetune              --data DIR --n 4 --init PRETRAIN_DIR/model --out RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from segsynth.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _spec(a: argparse.Namespace) -> Any:
    from segsynth.cli import spec_from_args

    return spec_from_args(a)


def _info_path(model_dir: Path) -> Path:
    return model_dir / "dataset_info.json"


# ------------------------------------------------------------------------------------------ transforms-fit
def cmd_transforms_fit(a: argparse.Namespace) -> int:
    from segsynth.data.dataset import load_dataset, load_unlabelled
    from segsynth.generators.learned_transforms import LearnedTransforms, TransformFitConfig
    from segsynth.utils.device import resolve_device
    from segsynth.utils.files import atomic_dir, write_json
    from segsynth.utils.seed import derive_seed

    device = resolve_device(a.device)
    spec = _spec(a)
    data = load_dataset(a.data, spec, progress=not a.quiet)
    cases = sorted(data.cases, key=lambda c: c.case_id)
    if a.atlas is not None:
        match = [c for c in cases if c.case_id == a.atlas]
        if not match:
            raise DataError(f"no case {a.atlas!r} (cases: {', '.join(c.case_id for c in cases[:5])}, ...)", a.data)
        atlas = match[0]
    else:
        atlas = cases[0]
    if a.unlabelled is not None:
        pool = load_unlabelled(a.unlabelled, spec, max_cases=a.max_unlabelled, progress=not a.quiet)
    else:
        from segsynth.data.case import Case

        pool = [Case(c.case_id, c.image, None, c.meta) for c in cases if c.case_id != atlas.case_id]
    if a.max_unlabelled is not None:
        pool = pool[: a.max_unlabelled]
    cfg = TransformFitConfig(steps=a.reg_steps, appearance_steps=a.app_steps, batch_size=a.reg_batch, lr=a.reg_lr,
                             similarity=a.similarity, smooth_weight=a.smooth_weight,
                             appearance_smooth_weight=a.app_smooth_weight, progress=not a.quiet,
                             precision=a.precision)
    t = LearnedTransforms.for_atlas(atlas, data.info.num_classes, inverse=a.inverse,
                                    integration_steps=a.integration_steps, seed=derive_seed(a.seed, "transforms-init"))
    stats = t.fit([atlas], unlabelled=pool, device=device, seed=a.seed, config=cfg)
    with atomic_dir(a.out) as tmp:
        t.save(tmp)
        write_json(_info_path(tmp), {"info": data.info.to_json(), "spec": spec.to_json(), "atlas": atlas.case_id})
    sp = stats["spatial"]
    print(f"atlas {atlas.case_id}; {len(pool)} unlabelled images; spatial loss {sp['loss_start']:.4f} -> "
          f"{sp['loss_end']:.4f} ({sp['seconds']:.0f} s)"
          + (f"; appearance loss {stats['appearance']['loss_start']:.4f} -> {stats['appearance']['loss_end']:.4f} "
             f"({stats['appearance']['seconds']:.0f} s)" if "appearance" in stats else ""))
    print(f"transform models: {a.out}")
    return 0


# ----------------------------------------------------------------------------------- transforms-synthesize
def cmd_transforms_synthesize(a: argparse.Namespace) -> int:
    from segsynth.data.case import DatasetInfo
    from segsynth.data.dataset import load_unlabelled
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.generators.learned_transforms import LearnedTransforms, RandAug, write_synthetic
    from segsynth.utils.device import resolve_device

    device = resolve_device(a.device)
    t = LearnedTransforms.load(a.model, device)
    ip = _info_path(Path(a.model))
    if not ip.exists():
        raise DataError("missing dataset_info.json (was this folder written by `segsynth transforms-fit`?)", ip)
    meta = json.loads(ip.read_text())
    info = DatasetInfo.from_json(meta["info"])
    if a.unlabelled is not None:
        spec_d = dict(meta["spec"])
        spec_d["percentiles"] = tuple(spec_d["percentiles"])
        for k in ("size", "shape_3d"):
            if isinstance(spec_d.get(k), list):
                spec_d[k] = tuple(spec_d[k])
        pool = load_unlabelled(a.unlabelled, PreprocessSpec(**spec_d), progress=not a.quiet)
        t.encode(pool, with_appearance=not a.no_appearance)
    elif t.bank is None:
        raise ConfigError(f"{a.model} holds no transform bank; give --unlabelled DIR to compute one")
    rand_aug = RandAug() if a.rand_aug else None
    from segsynth.experiments.shards import shard_options

    rec = write_synthetic(t, a.n, a.out, info, seed=a.seed, rand_aug=rand_aug, fmt=a.format, model_path=str(a.model),
                          **shard_options(a))
    print(f"wrote {rec.n} synthetic pairs to {rec.out_dir} in {rec.seconds:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------- domain-rand
def cmd_domain_rand(a: argparse.Namespace) -> int:
    from segsynth.data.dataset import load_dataset
    from segsynth.data.writer import DatasetWriter
    from segsynth.generators.domain_randomization import (
        DomainRandomization,
        DomainRandomizer,
        normalisation_for,
    )
    from segsynth.utils.seed import derive_seed, torch_generator

    data = load_dataset(a.data, _spec(a), progress=not a.quiet)
    cases = sorted(data.cases, key=lambda c: c.case_id)
    if a.n_labelled is not None:
        cases = cases[: a.n_labelled]
    r = DomainRandomizer(channels=data.info.in_channels, normalise=normalisation_for(data.info),
                         background_classes=a.background_classes)
    gen = DomainRandomization(data.info.num_classes, r)
    gen.fit(cases)
    g = torch_generator(derive_seed(a.seed, "domain-rand"))
    prov = {"method": "domain_rand", "seed": a.seed, "source": str(a.data), "label_maps": gen.mask_ids,
            "randomizer": r.to_json()}
    with DatasetWriter(a.out, data.info, fmt=a.format, provenance=prov, name=f"{data.info.name}_domain_rand") as w:
        for case in gen.iter_samples(a.n, generator=g):
            if not w.has(case.case_id):
                w.add(case)
    print(f"wrote {a.n} domain-randomised pairs from {len(cases)} label maps to {a.out}")
    return 0


# ---------------------------------------------------------------------------------------------- pretrain
def cmd_pretrain(a: argparse.Namespace) -> int:
    from segsynth.cli import _ints, train_config_from_args
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.generators.domain_randomization import DomainRandomizer, DomainRandSource
    from segsynth.generators.transfer import harmonise, load_pretraining_data, merge_label_spaces, pretrain
    from segsynth.utils.device import resolve_device

    roots = [Path(p) for p in a.data.split(",") if p.strip()]
    if not roots:
        raise ConfigError("--data needs at least one folder")
    shape_3d = _ints(a.shape_3d)
    spec = PreprocessSpec(spatial_dims=a.dims, size=a.size, shape_3d=shape_3d, normalise=a.normalise)
    sources = load_pretraining_data(roots, spec, max_cases=a.max_cases, progress=not a.quiet)
    dims = sources[0].cases[0].spatial_dims
    for s in sources:
        if s.cases[0].spatial_dims != dims:
            raise ConfigError(f"{s.name} is {s.cases[0].spatial_dims}D but {sources[0].name} is {dims}D; "
                              "use --dims 2 to work on 2D slices of every dataset")
    if dims == 3:
        if shape_3d is None:
            raise ConfigError("3D pretraining needs --shape-3d D,H,W (one working shape for every dataset)")
        shape: tuple[int, ...] = tuple(shape_3d)
    else:
        shape = (a.size, a.size)
    extra: list[tuple[Any, float]] = []
    if a.domain_rand > 0:
        labels, remapped = merge_label_spaces(sources)
        masks = [harmonise(c, a.channels, shape).mask for cases in remapped for c in cases]
        dr = DomainRandSource(masks, DomainRandomizer(channels=a.channels), max(labels) + 1,
                              patch_size=_ints(a.patch))
        # weight relative to the real sources (each real source has weight 1)
        extra.append((dr, a.domain_rand * len(sources) / max(1e-6, 1.0 - a.domain_rand)))
    res = pretrain(sources, a.out, spatial_dims=dims, in_channels=a.channels, shape=shape, segmenter=a.segmenter,
                   segmenter_kwargs={"features": _ints(a.unet_features)} if a.unet_features else None,
                   train_config=train_config_from_args(a), device=resolve_device(a.device), n_val=a.n_val,
                   seed=a.seed, extra_sources=extra)
    print(f"pretrained {a.segmenter} on {res.n_cases} ({len(res.labels)} classes); validation Dice "
          f"{res.best_val_dice:.3f}; {res.seconds:.0f} s")
    print(f"model: {res.out_dir}  (fine-tune with: segsynth finetune --init {res.out_dir} ...)")
    return 0


# ---------------------------------------------------------------------------------------------- finetune
def cmd_finetune(a: argparse.Namespace) -> int:
    from segsynth.cli import cmd_train

    init = Path(a.init)
    if "://" in str(a.init) or not init.exists():
        raise DataError("pretrained model not found (a local folder or .safetensors file is required)", a.init)
    a.method = "transfer"
    a.method_opt = list(a.method_opt) + [f"transfer.init={init}", f"transfer.part={a.part}"]
    if a.no_augment:
        a.method_opt.append("transfer.augment=false")
    return cmd_train(a)


# ------------------------------------------------------------------------------------------------ parser
def add_parser(sub: Any) -> None:
    from segsynth.cli import EPILOG, add_common, add_data_options, add_train_options

    s = sub.add_parser("transforms-fit", epilog=EPILOG,
                       help="learn spatial (registration) and appearance transforms from one labelled atlas to "
                            "unlabelled images (Zhao et al. 2019); save the models")
    add_common(s)
    add_data_options(s)
    g = s.add_argument_group("learned transforms")
    g.add_argument("--atlas", default=None, help="case id of the atlas in --data (default: the first by id)")
    g.add_argument("--unlabelled", type=Path, default=None,
                   help="folder of unlabelled images (default: the other cases of --data, labels ignored)")
    g.add_argument("--max-unlabelled", type=int, default=100, help="use at most this many unlabelled images")
    g.add_argument("--reg-steps", type=int, default=300, help="training steps of the spatial models")
    g.add_argument("--app-steps", type=int, default=300, help="training steps of the appearance model (0 = none)")
    g.add_argument("--reg-batch", type=int, default=4, help="unlabelled images per step")
    g.add_argument("--reg-lr", type=float, default=1e-3)
    g.add_argument("--similarity", choices=("ncc", "mse"), default="ncc", help="registration image similarity")
    g.add_argument("--smooth-weight", type=float, default=1.0, help="deformation smoothness weight")
    g.add_argument("--app-smooth-weight", type=float, default=1.0,
                   help="appearance smoothness weight (not penalised across label boundaries)")
    g.add_argument("--inverse", choices=("model", "negate"), default="model",
                   help="inverse transform: a trained backward model, or the negated forward velocity")
    g.add_argument("--integration-steps", type=int, default=7,
                   help="scaling-and-squaring steps (0 = plain displacement, not diffeomorphic)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                   help="training precision: bf16 autocast of the networks (auto: where the device runs it fast; "
                        "CUDA, or a CPU with AMX / avx512_bf16); integration, warps and losses stay fp32")
    s.set_defaults(func=cmd_transforms_fit)

    s = sub.add_parser("transforms-synthesize", epilog=EPILOG,
                       help="write a synthetic labelled dataset with learned transforms (spatial and appearance "
                            "drawn independently), with provenance per case")
    add_common(s)
    s.add_argument("--model", type=Path, required=True, help="folder written by `segsynth transforms-fit`")
    s.add_argument("--n", type=int, required=True, help="number of pairs to write")
    s.add_argument("--unlabelled", type=Path, default=None,
                   help="compute the transforms from these images instead of the ones saved with the model")
    s.add_argument("--rand-aug", action="store_true", help="compose rand-aug (smooth deformation + intensity "
                                                          "scaling) on top of each learned pair")
    s.add_argument("--no-appearance", action="store_true", help="spatial transforms only")
    s.add_argument("--format", choices=("auto", "png", "nifti"), default="auto")
    from segsynth.experiments.shards import add_shard_options

    add_shard_options(s)
    s.set_defaults(func=cmd_transforms_synthesize)

    s = sub.add_parser("domain-rand", epilog=EPILOG,
                       help="write a dataset of domain-randomised images (SynthSeg recipe) made from the label "
                            "maps of a labelled folder")
    add_common(s)
    add_data_options(s)
    s.add_argument("--n", type=int, required=True, help="number of pairs to write")
    s.add_argument("--n-labelled", type=int, default=None, help="use the first K label maps (default: all)")
    s.add_argument("--background-classes", type=int, default=3,
                   help="random smooth regions the background is split into")
    s.add_argument("--format", choices=("auto", "png", "nifti"), default="auto")
    s.set_defaults(func=cmd_domain_rand)

    s = sub.add_parser("pretrain", epilog=EPILOG,
                       help="pretrain a segmenter on several labelled folders (merged label space) and/or "
                            "domain-randomised data; fine-tune it later with `segsynth finetune`")
    add_common(s)
    s.add_argument("--data", required=True,
                   help="comma-separated dataset folders (real, or synthetic ones written by segsynth)")
    s.add_argument("--dims", type=int, choices=(2, 3), default=None,
                   help="2 = work on 2D (3D volumes are sliced); default: the data's own")
    s.add_argument("--size", type=int, default=128, help="2D working size")
    s.add_argument("--shape-3d", default=None, help="3D working shape D,H,W (required in 3D)")
    s.add_argument("--patch", default=None, help="3D training patch D,H,W (default: whole volumes)")
    s.add_argument("--normalise", default="auto", choices=("auto", "zscore", "percentile", "unit"))
    s.add_argument("--channels", type=int, default=1, help="input channels of the segmenter (RGB -> grey at 1)")
    s.add_argument("--max-cases", type=int, default=None, help="at most this many cases (volumes) per folder")
    s.add_argument("--domain-rand", type=float, default=0.0,
                   help="fraction of each batch made by domain randomisation of the label maps (0 = none)")
    add_train_options(s)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("finetune", epilog=EPILOG,
                       help="fine-tune a pretrained segmenter (--init, local files only) on N labelled cases; "
                            "the same as `segsynth train --method transfer`")
    add_common(s)
    add_data_options(s)
    add_train_options(s)
    s.add_argument("--init", required=True, help="pretrained model folder (from `segsynth pretrain`) or file")
    s.add_argument("--part", choices=("all", "encoder"), default="all", help="load the whole network or the encoder")
    s.add_argument("--no-augment", action="store_true", help="no classical augmentation while fine-tuning")
    s.add_argument("--n", type=int, required=True, help="number of labelled training cases")
    s.add_argument("--n-test", type=int, default=None, help="test cases (default: all not used for training)")
    s.add_argument("--overwrite", action="store_true",  # cmd_train reads it
                   help="replace the results in an existing non-empty --out (an interrupted run in --out "
                        "resumes without it)")
    s.set_defaults(func=cmd_finetune)
