"""``segsynth report``: the table, verdicts, curves and HTML report of existing sweeps, without training.

    segsynth report runs/sweep --out runs/sweep_report
    segsynth report machineA/sweep machineB/sweep --out merged     # runs merged by key, conflicts refused

A folder that holds only ``results.jsonl`` is enough. The merged records are written as ``OUT/results.jsonl``,
so the output is itself a sweep folder that ``segsynth report`` reads again.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HELP = ("re-render the Dice table, the verdicts (split level), the learning curves and report.html from existing "
        "sweep folders, without training; several folders are merged by run key (one run recorded differently "
        "in two folders is an error naming both)")


def cmd_report(a: argparse.Namespace) -> int:
    from segsynth.experiments.merge import merge_sweeps
    from segsynth.experiments.report import write_report
    from segsynth.experiments.sweep import print_summary
    from segsynth.utils.files import atomic_path

    records = merge_sweeps(a.sweeps)  # every input read and checked before anything is written
    out = Path(a.out)
    samples = sorted(str(p) for d in a.sweeps if Path(d).is_dir() for p in (Path(d) / "samples").glob("*.png"))
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "results.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        names = ", ".join(Path(d).name or str(d) for d in a.sweeps)
        methods = list(dict.fromkeys(str(r.get("method")) for r in records))
        write_report(records, out, title=a.title or f"segsynth sweep report: {names}",
                     baseline="none" if "none" in methods else methods[0], sample_images=samples)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print_summary(records, out)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from segsynth.cli import EPILOG

    s = sub.add_parser("report", help=HELP, description=HELP, epilog=EPILOG)
    s.add_argument("sweeps", nargs="+", type=Path, metavar="DIR",
                   help="sweep folders (each with results.jsonl) or results.jsonl files")
    s.add_argument("--out", type=Path, required=True,
                   help="folder for report.html, the curves and the merged results.jsonl")
    s.add_argument("--title", default=None, help="report title")
    s.set_defaults(func=cmd_report)
