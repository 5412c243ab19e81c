"""``segsynth audit``: label fidelity of any synthetic dataset folder (GenSeg, brainSPADE, learned transforms, ...).

    segsynth audit --synthetic syn/jsrt --data ../shared/data/jsrt_lungs --fidelity-model runs/model8/model --out audit
    segsynth audit --synthetic syn/jsrt --data ../shared/data/jsrt_lungs --size 128 --steps 500 --out audit

With ``--fidelity-model`` (a folder written by ``segsynth train``, ideally ``--method augment`` on the generator's
own N cases) its preprocessing is used for both folders and every labelled case of ``--data`` is the real
yardstick. Without it, an ``augment`` segmenter is trained on ``--data`` minus ``--n-val`` cases (kept in
``--out/reference``; a rerun reuses it) and those held-out cases are the yardstick.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = ("label fidelity of a synthetic dataset: Dice of a segmenter trained on real pairs, on the synthetic images "
        "against their masks, vs the same on real pairs; writes fidelity.json and a montage of the least "
        "faithful pairs")


def run_fidelity_audit(a: argparse.Namespace, synthetic_dir: Path, model_dir: Path | None, out: Path) -> dict[str, Any]:
    """Shared by ``segsynth audit`` and ``segsynth brainspade-audit --fidelity-model``."""
    from segsynth.cli import spec_from_args, train_config_from_args
    from segsynth.commands.brainspade import _spec_from_json
    from segsynth.data.dataset import load_dataset
    from segsynth.errors import ConfigError
    from segsynth.evaluate.fidelity import audit_fidelity, fidelity_advice, format_fidelity

    patch = None
    if model_dir is not None:
        from segsynth.utils.config import load_state

        _, config = load_state(model_dir, name="model")
        spec = _spec_from_json(config["spec"]) if config.get("spec") else spec_from_args(a)
        patch = config.get("patch_size")
    else:
        spec = spec_from_args(a)
    real = load_dataset(a.data, spec, progress=not a.quiet)
    synthetic = load_dataset(synthetic_dir, spec, progress=not a.quiet)
    if synthetic.info.num_classes != real.info.num_classes:
        raise ConfigError(f"{synthetic_dir}: {synthetic.info.num_classes} classes, but {a.data} has "
                          f"{real.info.num_classes}")
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


def cmd_audit(a: argparse.Namespace) -> int:
    run_fidelity_audit(a, a.synthetic, a.fidelity_model, a.out)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from segsynth.cli import EPILOG, add_common, add_data_options, add_train_options

    s = sub.add_parser("audit", help=HELP, description=HELP, epilog=EPILOG)
    add_common(s)
    add_data_options(s)
    add_train_options(s)
    s.add_argument("--synthetic", type=Path, required=True, help="synthetic dataset folder (any layout segsynth reads)")
    s.add_argument("--fidelity-model", type=Path, default=None,
                   help="a saved segmenter folder (segsynth train ... --out X: X/model) as the reference; default: "
                        "train an augment segmenter on --data")
    s.add_argument("--max-synthetic", type=int, default=None, help="score only the first this many pairs")
    s.set_defaults(func=cmd_audit)
