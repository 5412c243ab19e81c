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

HELP = ("label fidelity of a synthetic dataset: Dice of a segmenter trained on real pairs, on the synthetic images "
        "against their masks, vs the same on real pairs; writes fidelity.json and a montage of the least "
        "faithful pairs")


def cmd_audit(a: argparse.Namespace) -> int:
    from segsynth.commands.fidelity_audit import run_fidelity_audit

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
