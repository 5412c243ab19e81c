"""The label-fidelity audit both ``segsynth audit`` and ``segsynth brainspade-audit --fidelity-model`` run.

It sits below the two command modules (each imports it, it imports neither), so neither borrows from the other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def run_fidelity_audit(a: argparse.Namespace, synthetic_dir: Path, model_dir: Path | None, out: Path) -> dict[str, Any]:
    """Score ``synthetic_dir`` against ``a.data`` with the segmenter in ``model_dir`` (its preprocessing for both
    folders) or, without one, an ``augment`` segmenter trained on ``a.data``; print the result, write it in ``out``."""
    from segsynth.cli import spec_from_args, train_config_from_args
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.errors import ConfigError
    from segsynth.evaluate.fidelity import audit_fidelity, fidelity_advice, format_fidelity

    patch = None
    if model_dir is not None:
        from segsynth.utils.config import load_state

        _, config = load_state(model_dir, name="model")
        spec = PreprocessSpec.from_json(config["spec"]) if config.get("spec") else spec_from_args(a)
        patch = config.get("patch_size")
    else:
        spec = spec_from_args(a)
    real = load_dataset(a.data, spec, progress=not a.quiet)
    synthetic = load_dataset(synthetic_dir, spec, progress=not a.quiet)
    if synthetic.info.num_classes != real.info.num_classes:
        raise ConfigError(f"{synthetic_dir}: {synthetic.info.num_classes} classes, but {a.data} has "
                          f"{real.info.num_classes}")
    if model_dir is not None:  # images the saved model cannot take (2D vs 3D, grey vs colour): one line, not torch's
        from segsynth.segment.model_io import check_input_fits

        for folder, ds in ((a.data, real), (synthetic_dir, synthetic)):
            check_input_fits(config, ds.info.extra.get("source_spatial_dims", ds.info.spatial_dims),
                             ds.info.in_channels, folder, model_dir)
    cfg = None if model_dir is not None else train_config_from_args(a)
    if cfg is not None:
        patch = cfg.patch_size
    res = audit_fidelity(synthetic.cases[: a.max_synthetic] if getattr(a, "max_synthetic", None) else synthetic.cases,
                         real.cases, real.info, out=out, model_dir=model_dir, device=a.device, seed=a.seed,
                         n_val=getattr(a, "n_val", 2), train_config=cfg, segmenter=getattr(a, "segmenter", "unet"),
                         patch_size=patch)
    print(format_fidelity(res))
    advice = fidelity_advice(res)
    if advice:
        print(f"  -> {advice}")
    print(f"written: {out / 'fidelity.json'}, {res['montage']}")
    return res
