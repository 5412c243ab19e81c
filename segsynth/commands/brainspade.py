"""CLI for brainSPADE: train the label and image generators, sample a dataset, audit it, export it.

    segsynth brainspade-train-labels --data ../shared/data/aomic_brain --size 64 --n 1 \\
        --volume-pattern '^(sub-\\d+)_ax(\\d+)$' --out models/aomic_labels   # rerun to resume after a kill
    segsynth brainspade-train-images --data ../shared/data/aomic_brain --size 64 --n 1 \\
        --volume-pattern '^(sub-\\d+)_ax(\\d+)$' --out models/aomic_images   # rerun to resume after a kill
    segsynth brainspade-sample --labels models/aomic_labels --images models/aomic_images --n 2000 \\
        --out synthetic/aomic_brainspade          # rerun the same command to resume after a kill
    segsynth brainspade-audit --synthetic synthetic/aomic_brainspade --model models/aomic_images \\
        --data ../shared/data/aomic_brain --out audits/aomic
    segsynth export --data synthetic/aomic_brainspade --format nnunet --dataset-id 501 --out nnUNet_raw
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from segsynth.errors import ConfigError, DataError
from segsynth.experiments.shards import add_shard_options, shard_options

log = logging.getLogger(__name__)

INFO_FILE = "dataset_info.json"
CHECKPOINT_DIR = "checkpoint"  # training checkpoints inside --out, removed once the model is saved
LABELS_HELP = ("brainSPADE label generator: KL autoencoder over partial-volume maps + latent diffusion model; "
               "saves the model folder")
IMAGES_HELP = ("brainSPADE image generator: SPADE VAE-GAN with a style encoder painting images on PV label maps "
               "(hinge GAN, feature matching, KLD, modality and contrastive style losses); saves the model folder")
RESUME_HELP = (f". Resumable: rerunning the same command after a kill continues from the last checkpoint "
               f"(written every --checkpoint-every steps to OUT/{CHECKPOINT_DIR}/, removed once the model is saved) "
               f"and, on the same device, ends with the model an uninterrupted run would have saved")


# ----------------------------------------------------------------------------------------------- helpers


def _opts(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--opt {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _load_training(a: argparse.Namespace):
    """Load --data with the preprocessing options; pick --n training volumes/cases (all when --n is not given)."""
    from segsynth.cli import spec_from_args
    from segsynth.data.dataset import load_dataset
    from segsynth.data.splits import split_cases
    from segsynth.generators.brainspade import assign_volumes

    spec = spec_from_args(a)
    data = load_dataset(a.data, spec, progress=not a.quiet)
    if a.volume_pattern:
        assign_volumes(data.cases, a.volume_pattern)
    if a.n is None:
        return data, list(data.cases), [], spec
    split = split_cases(data.cases, n_train=a.n, n_val=a.n_val, seed=a.seed, n_test=0)
    return data, split.train, split.val, spec


def _save_info(out: Path, data, spec, train, extra: dict[str, Any]) -> None:
    from segsynth.utils.files import write_json

    write_json(out / INFO_FILE, {"info": data.info.to_json(), "spec": spec.to_json(),
                                 "train_ids": [c.case_id for c in train], **extra})


def _finish(out: Path, stats: dict[str, Any]) -> None:
    """Write the fit statistics (the model is complete), then drop the training checkpoints."""
    import shutil

    from segsynth.utils.files import write_json

    write_json(out / "fit_stats.json", stats)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def _read_info(model_dir: Path) -> dict[str, Any]:
    p = Path(model_dir) / INFO_FILE
    if not p.exists():
        raise DataError(f"no {INFO_FILE} (was this model written by segsynth brainspade-train-*?)", model_dir)
    return json.loads(p.read_text())


def _add_data(p: argparse.ArgumentParser) -> None:
    from segsynth.cli import add_data_options

    add_data_options(p)
    g = p.add_argument_group("training cases")
    g.add_argument("--n", type=int, default=None,
                   help="train on N labelled volumes (or cases) chosen by --seed (default: all cases)")
    g.add_argument("--n-val", type=int, default=0, help="validation volumes held out (reported, not trained on)")
    g.add_argument("--volume-pattern", default=None,
                   help="regex on case ids grouping 2D slice files into volumes: group 1 = volume, optional "
                        "group 2 = slice index, e.g. '^(sub-\\d+)_ax(\\d+)$' (style/content from different "
                        "slices, splits by volume, slice-position conditioning)")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other generator option (see LabelGenerator / ImageGenerator), repeatable")
    g = p.add_argument_group("resuming")
    g.add_argument("--checkpoint-every", type=int, default=100,
                   help=f"checkpoint training every this many steps (default 100) in OUT/{CHECKPOINT_DIR}/; "
                        "rerunning the same command after a kill resumes from the last checkpoint")


# ----------------------------------------------------------------------------------------------- commands


def cmd_train_labels(a: argparse.Namespace) -> int:
    from segsynth.generators.brainspade import LabelGenerator
    from segsynth.utils.device import resolve_device

    data, train, val, spec = _load_training(a)
    opts = {"spatial_dims": data.info.spatial_dims, "num_classes": data.info.num_classes,
            "ae_steps": a.ae_steps, "ldm_steps": a.ldm_steps, "condition": a.condition, "pv_sigma": a.pv_sigma,
            "progress": not a.quiet, **_opts(a.opt)}
    gen = LabelGenerator(**opts)
    stats = gen.fit(train, val=val, device=resolve_device(a.device), seed=a.seed,
                    checkpoint_dir=a.out / CHECKPOINT_DIR, checkpoint_every=a.checkpoint_every)
    gen.save(a.out)
    _save_info(a.out, data, spec, train, {"kind": "labels", "volume_pattern": a.volume_pattern})
    _finish(a.out, stats)
    print(f"label generator trained on {len(train)} cases in {stats['ae_seconds'] + stats['ldm_seconds']:.0f} s "
          f"(autoencoder L1 {stats['ae']['l1_final_mean']:.4f}, diffusion MSE {stats['ldm']['mse_final_mean']:.4f}); "
          f"saved to {a.out}")
    return 0


def cmd_train_images(a: argparse.Namespace) -> int:
    from segsynth.data.dataset import load_unlabelled
    from segsynth.generators.brainspade import ImageGenerator
    from segsynth.utils.device import resolve_device

    data, train, val, spec = _load_training(a)
    unlabelled = []
    if a.unlabelled is not None:
        unlabelled = load_unlabelled(a.unlabelled, spec, max_cases=a.max_unlabelled, progress=not a.quiet)
        for c in unlabelled:
            c.meta.setdefault("domain", str(a.unlabelled))
    opts = {"spatial_dims": data.info.spatial_dims, "num_classes": data.info.num_classes,
            "in_channels": data.info.in_channels, "spade_steps": a.spade_steps, "pv_sigma": a.pv_sigma,
            "progress": not a.quiet, **_opts(a.opt)}
    gen = ImageGenerator(**opts)
    stats = gen.fit(train, val=val, unlabelled=unlabelled, device=resolve_device(a.device), seed=a.seed,
                    checkpoint_dir=a.out / CHECKPOINT_DIR, checkpoint_every=a.checkpoint_every)
    gen.save(a.out)
    _save_info(a.out, data, spec, train, {"kind": "images", "volume_pattern": a.volume_pattern,
                                          "unlabelled": str(a.unlabelled) if a.unlabelled else None})
    _finish(a.out, stats)
    print(f"image generator trained on {len(train)} cases ({len(stats['domains'])} domain(s): "
          f"{', '.join(stats['domains'])}) in {stats['gan_seconds'] + stats['classifier_seconds']:.0f} s; "
          f"saved to {a.out}")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from segsynth.data.case import DatasetInfo
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.generators.brainspade import (
        BrainSpadeGenerator,
        ImageGenerator,
        LabelGenerator,
        write_synthetic_dataset,
    )
    from segsynth.utils.device import resolve_device

    device = resolve_device(a.device)
    meta = _read_info(a.images)
    info = DatasetInfo.from_json(meta["info"])
    spec = PreprocessSpec.from_json(meta["spec"])
    images = ImageGenerator.load(a.images, device)
    masks = mask_ids = None
    if a.masks is not None:
        from segsynth.data.dataset import load_dataset

        given = load_dataset(a.masks, spec, progress=not a.quiet)
        masks, mask_ids = [c.mask for c in given.cases], [c.case_id for c in given.cases]
        gen: Any = images
        model = str(a.images)
    elif a.labels is not None:
        gen = BrainSpadeGenerator.from_parts(LabelGenerator.load(a.labels, device), images)
        model = f"{a.labels} + {a.images}"
    else:
        raise ConfigError("give --labels (a trained label generator) or --masks (a labelled folder)")
    styles = None
    if a.styles is not None:
        from segsynth.data.dataset import load_unlabelled

        styles = load_unlabelled(a.styles, spec, max_cases=a.max_styles, progress=not a.quiet)
    if a.n < 1:
        raise ConfigError(f"--n must be >= 1, got {a.n}")
    out = write_synthetic_dataset(gen, a.out, a.n, info=info, seed=a.seed, batch_size=a.batch_size, masks=masks,
                                  mask_ids=mask_ids, styles=styles, style_domain=a.style_domain,
                                  sampler=a.sampler, steps=a.steps, model=model, fmt=a.format,
                                  overwrite=a.overwrite, progress=not a.quiet, precision=a.precision,
                                  **shard_options(a))
    print(f"synthetic dataset: {out} ({a.n} pairs; provenance in {out / 'provenance.jsonl'})")
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.evaluate.privacy import memorisation_audit
    from segsynth.evaluate.quality import quality_report
    from segsynth.generators.brainspade import assign_volumes
    from segsynth.utils.files import write_json

    train_ids = None
    volume_pattern = a.volume_pattern
    if a.model is not None:
        meta = _read_info(a.model)
        spec = PreprocessSpec.from_json(meta["spec"])
        train_ids = set(meta.get("train_ids") or [])
        volume_pattern = volume_pattern or meta.get("volume_pattern")
    else:
        from segsynth.cli import spec_from_args

        spec = spec_from_args(a)
    synthetic = load_dataset(a.synthetic, PreprocessSpec(size=None), progress=not a.quiet).cases
    real = load_dataset(a.data, spec, progress=not a.quiet).cases
    if volume_pattern:
        assign_volumes(real, volume_pattern)
    if train_ids:
        training = [c for c in real if c.case_id in train_ids]
        held_out = [c for c in real if c.case_id not in train_ids]
    else:
        training, held_out = real, []
    if not training:
        raise DataError("none of the generator's training cases are in --data (same folder and options?)", a.data)
    if a.max_synthetic is not None:
        synthetic = synthetic[: a.max_synthetic]
    reference = held_out[: a.max_reference] if held_out else None
    audit = memorisation_audit(synthetic, training, reference=reference, max_shift=a.max_shift)
    quality = quality_report(held_out or training, synthetic)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "privacy.json", {**audit.summary(), "rows": audit.rows})
    write_json(a.out / "quality.json", {**quality, "real_set": "held-out real" if held_out else "training"})
    print(audit.format())
    print(f"quality vs {'held-out' if held_out else 'training'} real images ({quality['encoder']}): "
          f"FID-like {quality['fid']:.2f} (real-vs-real floor {quality['fid_real_halves']:.2f}), diversity ratio "
          f"{quality['diversity_ratio']:.2f}, mean pairwise SSIM synthetic {quality['ssim_synthetic']:.3f} / real "
          f"{quality['ssim_real']:.3f}")
    print(f"written: {a.out / 'privacy.json'}, {a.out / 'quality.json'}")
    if a.fidelity_model is not None:
        from segsynth.commands.fidelity_audit import run_fidelity_audit

        run_fidelity_audit(a, a.synthetic, a.fidelity_model, a.out)
    return 0 if audit.verdict == "pass" or not a.strict else 3


def cmd_export(a: argparse.Namespace) -> int:
    if a.format == "nnunet":
        from segsynth.export.nnunet import export_nnunet

        out = export_nnunet(a.data, a.out, dataset_id=a.dataset_id, name=a.name, file_ending=a.file_ending,
                            overwrite=a.overwrite)
    else:
        from segsynth.export.msd import export_msd

        if a.file_ending != ".nii.gz":
            raise ConfigError("the MSD format is NIfTI only")
        out = export_msd(a.data, a.out, name=a.name, overwrite=a.overwrite)
    print(f"exported {a.data} -> {out} ({a.format})")
    return 0


# ----------------------------------------------------------------------------------------------- parser


def add_parser(sub: Any) -> None:
    from segsynth.cli import EPILOG, add_common

    s = sub.add_parser("brainspade-train-labels", epilog=EPILOG, help=LABELS_HELP,
                       description=LABELS_HELP + RESUME_HELP)
    add_common(s)
    _add_data(s)
    g = s.add_argument_group("label generator")
    g.add_argument("--ae-steps", type=int, default=1500, help="autoencoder steps (default 1500)")
    g.add_argument("--ldm-steps", type=int, default=2000, help="diffusion model steps (default 2000)")
    g.add_argument("--condition", choices=("slice_position", "class_presence"), default=None,
                   help="condition the diffusion model on the slice position or the presence of each class")
    g.add_argument("--pv-sigma", type=float, default=0.5, help="smoothing (voxels) of labels into PV maps")
    s.set_defaults(func=cmd_train_labels)

    s = sub.add_parser("brainspade-train-images", epilog=EPILOG, help=IMAGES_HELP,
                       description=IMAGES_HELP + RESUME_HELP)
    add_common(s)
    _add_data(s)
    g = s.add_argument_group("image generator")
    g.add_argument("--spade-steps", type=int, default=1500, help="GAN steps (default 1500)")
    g.add_argument("--unlabelled", type=Path, default=None,
                   help="folder of unlabelled images of a target domain: their styles are learned too "
                        "(modality loss) and can be used at sampling")
    g.add_argument("--max-unlabelled", type=int, default=None)
    g.add_argument("--pv-sigma", type=float, default=0.5, help="smoothing (voxels) of labels into PV maps")
    s.set_defaults(func=cmd_train_images)

    s = sub.add_parser("brainspade-sample", epilog=EPILOG,
                       help="write N synthetic pairs as a dataset folder (streamed, resumable: rerun the same "
                            "command after a kill; provenance per sample: seed, model, style source)")
    add_common(s)
    s.add_argument("--images", type=Path, required=True, help="image generator folder (brainspade-train-images)")
    s.add_argument("--labels", type=Path, default=None, help="label generator folder (brainspade-train-labels)")
    s.add_argument("--masks", type=Path, default=None,
                   help="labelled dataset folder whose masks are painted instead of generated labels")
    s.add_argument("--styles", type=Path, default=None,
                   help="folder of (unlabelled) images whose styles are used (out-of-domain synthesis)")
    s.add_argument("--max-styles", type=int, default=None)
    s.add_argument("--style-domain", default=None,
                   help="stored styles to draw: source (default), target, any, or a domain name")
    s.add_argument("--n", type=int, required=True, help="number of pairs")
    s.add_argument("--sampler", choices=("ddim", "ddpm", "dpm"), default=None,
                   help="diffusion sampler: ddim (default), ddpm (1000 steps) or dpm (DPM-Solver++, few steps)")
    s.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the model's DDIM steps, 50; dpm: 15)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                   help="sampling precision: bf16 autocast of the networks (auto: where the device runs it fast; "
                        "CUDA, or a CPU with AMX / avx512_bf16); pairs are written in fp32 either way")
    s.add_argument("--format", choices=("auto", "png", "nifti"), default="auto")
    s.add_argument("--overwrite", action="store_true", help="replace a finished dataset at --out")
    add_shard_options(s)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("brainspade-audit", epilog=EPILOG,
                       help="quality (FID-like distance, diversity) and memorisation audit (nearest training "
                            "image in pixel and feature space, near-copies flagged) of a synthetic dataset")
    add_common(s, out=True)
    from segsynth.cli import add_data_options

    add_data_options(s)
    s.add_argument("--synthetic", type=Path, required=True, help="synthetic dataset folder")
    s.add_argument("--model", type=Path, default=None,
                   help="the generator folder: its preprocessing and training-case list are used, the other "
                        "cases of --data become the held-out reference")
    s.add_argument("--volume-pattern", default=None, help="regex grouping slice files into volumes (see train)")
    s.add_argument("--max-shift", type=int, default=2, help="translations searched in pixel space (voxels)")
    s.add_argument("--max-synthetic", type=int, default=None)
    s.add_argument("--max-reference", type=int, default=500)
    s.add_argument("--strict", action="store_true", help="exit with code 3 when near-copies are found")
    s.add_argument("--fidelity-model", type=Path, default=None,
                   help="also measure label fidelity against this saved segmenter (segsynth train --method augment "
                        "... --out X: give X/model); writes fidelity.json (see `segsynth audit`)")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("export", epilog=EPILOG,
                       help="export a dataset folder (e.g. a synthetic one) to nnU-Net v2 raw or MSD format")
    s.add_argument("--data", type=Path, required=True, help="dataset folder (any layout segsynth reads)")
    s.add_argument("--format", choices=("nnunet", "msd"), required=True)
    s.add_argument("--out", type=Path, required=True,
                   help="nnunet: the nnUNet_raw folder (Dataset<ID>_<name>/ is created in it); msd: the folder")
    s.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id (1-999)")
    s.add_argument("--name", default=None, help="dataset name (default: the source's)")
    s.add_argument("--file-ending", choices=(".nii.gz", ".png"), default=".nii.gz")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_export)
