"""CLI: ``segsynth genseg`` (train a GenSeg generator + segmenter) and ``segsynth synthesize`` (write data).

    segsynth genseg --data ../shared/data/jsrt_lungs --n 7 --n-val 2 --size 128 --steps 500 --out runs/genseg
    segsynth synthesize --model runs/genseg/generator --augment-from ../shared/data/jsrt_lungs --n 200 \\
        --out synthetic/jsrt_genseg
    segsynth synthesize --model runs/genseg/generator --masks my_masks/ --out synthetic/from_masks
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GENSEG_HELP = ("train GenSeg: a searchable Pix2Pix mask-to-image generator trained end to end with a segmenter "
               "(architecture follows the segmenter's validation loss); saves generator and segmenter and "
               "evaluates on the held-out cases")
SYNTH_HELP = ("write a synthetic dataset (dataset.json + provenance: seed, source mask, model) with a trained "
              "GenSeg generator, from given masks or augmented masks of a dataset")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from segsynth.cli import EPILOG, add_common, add_data_options, add_train_options

    s = sub.add_parser("genseg", help=GENSEG_HELP, description=GENSEG_HELP, epilog=EPILOG)
    add_common(s)
    add_data_options(s)
    add_train_options(s)
    s.add_argument("--n", type=int, required=True, help="number of labelled training cases")
    s.add_argument("--n-test", type=int, default=None, help="test cases (default: all not used for training)")
    s.add_argument("--separate", action="store_true",
                   help="the ablation: train the generator without segmentation feedback, then use it")
    g = s.add_argument_group("GenSeg (all its options, listed below the others, with --method-opt genseg.KEY=VALUE)")
    if hasattr(s, "add_help_section"):
        s.add_help_section(genseg_options_help)
    g.add_argument("--pretrain-steps", type=int, default=None, help="GAN steps before the segmenter (default 300)")
    g.add_argument("--arch-every", type=int, default=None, help="architecture update every K steps (default 2)")
    g.add_argument("--hypergradient", choices=("finite_difference", "exact"), default=None,
                   help="how the architecture hypergradient is computed (default finite_difference)")
    g.add_argument("--gen-features", type=int, default=None, help="generator channels at the first level (32)")
    s.set_defaults(func=cmd_genseg)

    s = sub.add_parser("synthesize", help=SYNTH_HELP, description=SYNTH_HELP, epilog=EPILOG)
    add_common(s)
    s.add_argument("--model", type=Path, required=True,
                   help="a generator folder (genseg.json) or a `segsynth genseg` output folder")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--masks", type=Path, help="folder (or file) of masks: one image per mask (cycled up to --n)")
    src.add_argument("--augment-from", type=Path,
                     help="labelled dataset folder whose masks are augmented (flip, crop/pad, scale, translate, "
                          "rotate, shear, elastic) and rendered")
    s.add_argument("--n", type=int, default=None, help="number of pairs (default: one per mask with --masks)")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                   help="rendering precision: bf16 autocast of the generator (auto: where the device runs it fast; "
                        "CUDA, or a CPU with AMX / avx512_bf16); images are written in fp32 either way")
    s.add_argument("--format", choices=("auto", "png", "nifti"), default="auto",
                   help="file format (auto: PNG for 2D X-ray/photos, NIfTI otherwise)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    from segsynth.experiments.shards import add_shard_options

    add_shard_options(s)
    s.set_defaults(func=cmd_synthesize)


# ---------------------------------------------------------------------------------------------- genseg

def genseg_options_help() -> str:
    """Every GenSegOptions field with its default and its line of the docstring (shown by ``--help`` only)."""
    import dataclasses
    import re
    import textwrap

    from segsynth.generators.genseg import GenSegOptions

    docs: dict[str, str] = {}
    names: list[str] = []
    for line in (GenSegOptions.__doc__ or "").splitlines():
        m = re.match(r"^\s{8}([a-z_][a-z0-9_, ]*):\s+(.*)$", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                docs[n] = m.group(2).strip()
        elif names and re.match(r"^\s{12}\S", line):
            for n in names:
                docs[n] += " " + line.strip()
        else:
            names = []
    lines = ["GenSeg options (--method-opt genseg.KEY=VALUE; VALUE is JSON, e.g. genseg.search=false):"]
    for f in dataclasses.fields(GenSegOptions):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(textwrap.fill(f"{f.name}={json.dumps(default)}  {docs.get(f.name, '')}".rstrip(), width=100,
                                   initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def _genseg_options(a: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from segsynth.cli import parse_method_options

    method = "separate" if a.separate else "genseg"
    parsed = parse_method_options(a.method_opt)
    opts = {**parsed.get("genseg", {}), **parsed.get(method, {})}
    for flag, key in (("pretrain_steps", "pretrain_steps"), ("arch_every", "arch_every"),
                      ("hypergradient", "hypergradient"), ("gen_features", "features")):
        v = getattr(a, flag)
        if v is not None:
            opts[key] = v
    opts.setdefault("save_search", not a.separate)
    return method, opts


def cmd_genseg(a: argparse.Namespace) -> int:
    from segsynth.cli import _prepare_split, segmenter_kwargs_from_args, train_config_from_args
    from segsynth.data.case import Case
    from segsynth.generators.base import MethodContext
    from segsynth.generators.genseg import GenSegOptions, train_genseg
    from segsynth.segment.model_io import save_segmenter
    from segsynth.segment.run_summary import model_record, run_summary, score_test_cases
    from segsynth.utils.device import resolve_device
    from segsynth.utils.files import write_json

    method, raw = _genseg_options(a)
    opts = GenSegOptions.from_dict(raw)
    data, split, spec = _prepare_split(a)
    device = resolve_device(a.device)
    ctx = MethodContext(info=data.info, train=split.train, val=split.val,
                        unlabelled=[Case(c.case_id, c.image, None, c.meta) for c in split.pool],
                        segmenter=a.segmenter, segmenter_kwargs=segmenter_kwargs_from_args(a),
                        train_config=train_config_from_args(a), seed=a.seed, device=device,
                        workdir=a.out / "work", options=raw)
    result, gen = train_genseg(ctx, opts, feedback=not a.separate)
    save_segmenter(result.model, a.out / "segmenter", data.info, spec, segmenter_kwargs=ctx.segmenter_kwargs,
                   extra=model_record(method, a.n, a.seed, result, split, device))
    gen.save(a.out / "generator")
    test = score_test_cases(result.model, split, data.info.labels, a.out / "test_metrics",
                            ctx.train_config.patch_size, device)
    summary = run_summary(method, a.n, a.seed, result, split, device, raw, test,
                          architecture=gen.config()["architecture"], search=gen.search_record)
    write_json(a.out / "summary.json", summary)
    scored = f"; test Dice {test['dice_mean']:.3f} over {test['n_cases']} cases" if test else ""
    print(f"{method} on {len(split.train)} cases: best validation Dice {result.best_val_dice:.3f}{scored}")
    print(f"generator ({json.dumps(gen.config()['architecture']['genotype'])}): {a.out / 'generator'}")
    print(f"segmenter: {a.out / 'segmenter'}   summary: {a.out / 'summary.json'}")
    return 0


# ---------------------------------------------------------------------------------------------- synthesize

def _generator_dir(path: Path) -> Path:
    from segsynth.generators.genseg import GENSEG_CONFIG

    if (path / GENSEG_CONFIG).exists():
        return path
    if (path / "generator" / GENSEG_CONFIG).exists():
        return path / "generator"
    raise DataError(f"no {GENSEG_CONFIG} here or in generator/: not a GenSeg generator folder", path)


def _read_masks(path: Path, gen: Any) -> list[tuple[str, np.ndarray]]:
    """(file stem, mask) for a mask file or folder: class ids at the generator's working size (stored values
    of the generator's dataset are mapped; see ``segsynth.data.dataset.load_masks``)."""
    from segsynth.data.dataset import load_masks, value_map_of

    vmap = value_map_of(gen.info) if gen.info is not None else {i: i for i in range(gen.num_classes)}
    masks, ids = load_masks(path, vmap, tuple(gen.spatial_shape), progress=False)
    return list(zip(ids, masks))


class GenSegPairs:
    """Pair ``i`` of ``segsynth synthesize``: ``genseg_{i:05d}`` from ``derive_seed(seed, "synthesize", i)``, for
    ``masks[i % len(masks)]`` when masks are given, else for an augmented source mask."""

    def __init__(self, gen: Any, seed: int, masks: list[tuple[str, np.ndarray]]):
        self.gen, self.seed, self.masks = gen, seed, masks

    def case_id(self, i: int) -> str:
        return f"genseg_{i:05d}"

    def __call__(self, indices: Any) -> Any:
        from segsynth.utils.seed import derive_seed

        for i in indices:
            seed = derive_seed(self.seed, "synthesize", i)
            if self.masks:
                name, mask = self.masks[i % len(self.masks)]
                yield self.gen.sample_pair(seed, mask, case_id=self.case_id(i), source_id=name)
            else:
                yield self.gen.sample_pair(seed, case_id=self.case_id(i))


def cmd_synthesize(a: argparse.Namespace) -> int:
    from segsynth.data.case import DatasetInfo
    from segsynth.experiments.shards import shard_options, write_pairs
    from segsynth.generators.genseg import GenSegGenerator
    from segsynth.utils.device import resolve_device
    from segsynth.utils.precision import describe_precision, resolve_precision

    model_dir = _generator_dir(a.model)
    device = resolve_device(a.device)
    gen = GenSegGenerator.load(model_dir, device)
    gen.precision = resolve_precision(a.precision, device)
    if a.n is not None and a.n < 1:
        raise ConfigError(f"--n must be >= 1, got {a.n}")
    assert gen.num_classes is not None and gen.image_channels is not None and gen.spatial_shape is not None
    if a.masks is not None:
        masks = _read_masks(a.masks, gen)
        n = a.n or len(masks)
        source = str(a.masks)
    else:
        from segsynth.data.dataset import load_dataset
        from segsynth.data.preprocess import PreprocessSpec

        if a.n is None:
            raise ConfigError("--augment-from needs --n (how many pairs to write)")
        n = a.n
        spec_json = (gen.info.extra.get("preprocess") if gen.info is not None else None) or {}
        spec = PreprocessSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_json.items()})
        data = load_dataset(a.augment_from, spec, progress=not a.quiet)
        if data.info.num_classes != gen.num_classes:
            raise DataError(f"the dataset has {data.info.num_classes} classes but the generator renders "
                            f"{gen.num_classes}", a.augment_from)
        if data.info.spatial_dims != len(gen.spatial_shape):
            raise DataError(f"the dataset is {data.info.spatial_dims}D but the generator is "
                            f"{len(gen.spatial_shape)}D", a.augment_from)
        gen.set_source_masks([c for c in data.cases if c.mask is not None])
        masks = []
        source = str(a.augment_from)
    info = gen.info or DatasetInfo(name="genseg", labels={i: f"class{i}" for i in range(gen.num_classes)},
                                   modality="other", spatial_dims=len(gen.spatial_shape),
                                   in_channels=gen.image_channels)
    info = DatasetInfo(name=f"{info.name} (GenSeg synthetic)", labels=dict(info.labels), modality=info.modality,
                       spatial_dims=info.spatial_dims, in_channels=info.in_channels, file_format=info.file_format,
                       extra={k: info.extra[k] for k in ("value_map",) if k in info.extra})  # masks keep raw values
    provenance = {"method": "genseg", "model": str(model_dir.resolve()), "seed": a.seed, "n": n,
                  "source": source, "augmented": a.masks is None,
                  "genotype": gen.require_net().current_genotype(), "precision": describe_precision(gen.precision)}
    write_pairs(a.out, info, n, GenSegPairs(gen, a.seed, masks), fmt=a.format, provenance=provenance,
                overwrite=a.overwrite, **shard_options(a))
    print(f"wrote {n} synthetic pairs to {a.out}")
    return 0
