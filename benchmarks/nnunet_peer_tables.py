"""The tables of docs/nnunet.md for one task of ``nnunet_peer.py``, from its committed sweeps (no training).

    python benchmarks/nnunet_peer_tables.py hippo3d             # every split recorded so far
    python benchmarks/nnunet_peer_tables.py jsrt --splits 6

Prints two Markdown tables: each run's Dice and HD95 per split (in domain), its seconds and peak memory (nnU-Net's
own subprocesses for ``nnunet`` runs); then the split-level verdict of each comparison the benchmark makes
(``method_evidence.NNUNET_PEER``, in the same orientation and cells), per test set. A split not recorded yet
shows "–", so the tables can be read while the benchmark is still running. Read-only; seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from method_evidence import NNUNET_PEER, evidence_cells  # noqa: E402

from segsynth.experiments.verdict import verdicts  # noqa: E402
from segsynth.utils.files import read_jsonl  # noqa: E402

#: (budget, method, row label) of the per-run table
RUNS: list[tuple[str, str, str]] = [
    ("images", "augment", "`augment`"),
    ("images", "separate_aug", "`separate_aug`"),
    ("images", "nnunet", "`nnunet`"),
    ("images", "nnunet+separate_aug", "`nnunet+separate_aug`"),
    ("seconds", "nnunet", "`nnunet` in `augment`'s wall clock"),
    ("seconds", "nnunet+separate_aug", "`nnunet+separate_aug` in `augment`'s wall clock"),
]


def test_set_name(name: str) -> str:
    """"in-domain" -> "in domain"; an external set by its first word ("Shenzhen chest X-ray lungs" -> "Shenzhen")."""
    return "in domain" if name == "in-domain" else name.split()[0]


def load(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The finished records of each budget's sweep (``images``, ``seconds``); a budget not run yet is empty."""
    out = {}
    for budget in ("images", "seconds"):
        path = folder / budget / "results.jsonl"
        out[budget] = [r for r in read_jsonl(path) if r.get("status") == "ok"] if path.exists() else []
    return out


def _peak_mb(r: dict[str, Any]) -> float:
    """nnU-Net runs: the peak of the subprocesses that planned, trained and predicted (the process that wrote the
    record only waited on them); segsynth runs: the sweep's own peak."""
    sub = float((r.get("nnunet_budget") or {}).get("subprocess_peak_memory_mb") or 0.0)
    return sub if r["method"].startswith("nnunet") and sub > 0 else float(r.get("peak_memory_mb", 0))


def runs_table(records: dict[str, list[dict[str, Any]]], splits: list[int]) -> list[str]:
    span = f"{splits[0]}-{splits[-1]}" if len(splits) > 1 else str(splits[0])
    lines = [f"| run | Dice, splits {span} | HD95 (mm), splits {span} | seconds a run | peak memory |",
             "|---|---|---|---|---|"]
    for budget, method, label in RUNS:
        recs = {int(r["seed"]): r for r in records[budget] if r["method"] == method and r["test_set"] == "in-domain"}
        if not recs:
            continue
        dice = ", ".join(f"{recs[s]['dice_mean']:.3f}" if s in recs else "–" for s in splits)
        hd = ", ".join(f"{recs[s]['hd95_mean']:.1f}" if s in recs and math.isfinite(recs[s]["hd95_mean"]) else "–"
                       for s in splits)
        secs = [float(r["seconds"]) for r in recs.values()]
        peaks = [_peak_mb(r) for r in recs.values()]
        peak = f"{max(peaks) / 1024:.2f} GB" if max(peaks) > 0 else "–"
        lines.append(f"| {label} | {dice} | {hd} | {min(secs):.0f}-{max(secs):.0f} | {peak} |")
    return lines


def machines(records: dict[str, list[dict[str, Any]]], splits: list[int]) -> str:
    """Which CPU (or GPU) ran each split's runs, e.g. "split 0: Intel Xeon (amx); split 0's `nnunet` (seconds):
    AMD EPYC; split 1: AMD EPYC": the split is the verdict's unit, so a split whose runs were computed on
    different machines names the runs that differ (their seconds do not compare, and Dice moves with the
    kernels)."""
    by_split: dict[int, dict[str, list[str]]] = {}
    for budget, recs in records.items():
        for r in recs:
            if int(r["seed"]) in splits and r["test_set"] == "in-domain":
                where = r.get("cpu") if r.get("device", "cpu") == "cpu" else r.get("device")
                by_split.setdefault(int(r["seed"]), {}).setdefault(str(where), []).append(
                    f"`{r['method']}` ({budget})")
    parts = []
    for seed in sorted(by_split):
        kinds = sorted(by_split[seed].items(), key=lambda kv: -len(kv[1]))
        parts.append(f"split {seed}: {kinds[0][0]}")
        parts += [f"split {seed}'s {', '.join(runs)}: {cpu}" for cpu, runs in kinds[1:]]
    return "; ".join(parts)


def verdict_table(records: dict[str, list[dict[str, Any]]], splits: list[int]) -> list[str]:
    lines = ["| comparison (budget) | test set | verdict | mean [95 % CI] | per split | P(worse) | splits for ±2 |",
             "|---|---|---|---|---|---|---|"]
    for budget, method, baseline, _, how in NNUNET_PEER:
        recs = [r for r in records[budget] if r["method"] in (method, baseline) and int(r["seed"]) in splits]
        first = True
        for v in verdicts(recs, baselines=(baseline,)):
            if v["method_a"] != method:
                continue
            s = v["split"]
            word = f"**{s['word']}**" if s["word"] in ("helped", "hurt") else s["word"]
            name = f"`{method}` vs `{baseline}` ({how})" if first else ""
            first = False
            lines.append(f"| {name} | {test_set_name(v['test_set'])} | {word} | {' | '.join(evidence_cells(s))} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="kvasir, jsrt, isic or hippo3d (the folder results/nnunet_peer_<task>[_<tag>])")
    p.add_argument("--tag", default="")
    p.add_argument("--splits", type=int, default=None, help="show splits 0..K-1 (default: those recorded)")
    p.add_argument("--results", default=None, help="results folder (default: benchmarks/results)")
    a = p.parse_args(argv)
    folder = Path(a.results or RESULTS) / f"nnunet_peer_{a.task}{'_' + a.tag if a.tag else ''}"
    records = load(folder)
    if not records["images"]:
        raise SystemExit(f"no finished runs in {folder / 'images' / 'results.jsonl'}: run nnunet_peer.py first")
    seen = sorted({int(r["seed"]) for rs in records.values() for r in rs})
    splits = list(range(a.splits)) if a.splits else seen
    print("\n".join(runs_table(records, splits)))
    print(f"\nComputed on: {machines(records, splits)}.\n")
    print("\n".join(verdict_table(records, splits)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
