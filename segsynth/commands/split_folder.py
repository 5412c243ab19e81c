"""``segsynth split-folder``: one site's dataset folder as two disjoint dataset folders.

    segsynth split-folder ../shared/data/shenzhen_lungs --fraction 0.5 --seed 0 --out shenzhen_A shenzhen_B
    segsynth sweep --data jsrt --target-unlabelled shenzhen_A --test-data shenzhen_B --methods augment,spade_target

See ``segsynth.data.split_folder`` for what is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("split one site's dataset folder into two disjoint dataset folders A (FRACTION of its cases, e.g. the "
        "unlabelled part for --target-unlabelled) and B (the rest, e.g. the test part for --test-data); files are "
        "copied unchanged, slices of one volume stay together, the split is fixed by --seed, each part appears "
        "whole or not at all")


def cmd_split_folder(a: argparse.Namespace) -> int:
    from segsynth.cli import check_out
    from segsynth.data.split_folder import split_folder

    for out in a.out:
        check_out(out)
    part_a, part_b = split_folder(a.folder, a.out[0], a.out[1], fraction=a.fraction, seed=a.seed,
                                  overwrite=a.overwrite)
    for p, what in ((part_a, "A"), (part_b, "B")):
        print(f"{what}: {p['cases']} cases ({p['volumes']} volumes) -> {p['folder']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from segsynth.cli import EPILOG

    s = sub.add_parser("split-folder", help=HELP, description=HELP, epilog=EPILOG)
    s.add_argument("folder", type=Path, metavar="DIR", help="the dataset folder to split (any layout segsynth reads)")
    s.add_argument("--fraction", type=float, default=0.5, help="share of the cases (volumes) that go to A")
    s.add_argument("--seed", type=int, default=0, help="random seed of the split")
    s.add_argument("--out", type=Path, nargs=2, required=True, metavar=("A", "B"), help="the two folders to create")
    s.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    s.set_defaults(func=cmd_split_folder)
