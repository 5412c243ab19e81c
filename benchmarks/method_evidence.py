"""Every recommendation re-judged at the level of the split (issue 39): the committed sweeps, no training.

Each claim of README.md and benchmarks/README.md that compares two recipes is listed in ``CLAIMS`` with the sweep
folders it came from (``results/synthesis_pays_<task>_<tag>/<variant>/results.jsonl``; ``headroom_<task>`` for
"twice the labels"). For each, the verdict of ``segsynth.experiments.verdict`` (split = labelled cases + seed;
t interval on the per-split mean differences; P(worse on a new split); the splits that would detect ±2 Dice),
beside the case-level Wilcoxon p the claims used to quote.

    python benchmarks/method_evidence.py           # results/method_evidence.json, .md, and one plot per task
    python benchmarks/method_evidence.py --readme  # ... and the same table into benchmarks/README.md

Read-only on the sweeps; seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

from segsynth.evaluate.split_evidence import points  # noqa: E402
from segsynth.experiments.plots import split_differences  # noqa: E402
from segsynth.experiments.verdict import verdicts  # noqa: E402
from segsynth.utils.files import read_jsonl  # noqa: E402

#: the comparisons of nnunet_peer.py (also the rows of nnunet_peer_tables.py): (budget, method variant, baseline
#: variant, note, how docs/nnunet.md names the budget)
NNUNET_PEER: list[tuple[str, str, str, str, str]] = [
    ("images", "nnunet", "augment", "nnU-Net, as many images as augment sees", "matched images"),
    ("images", "separate_aug", "nnunet", "the best recipe against nnU-Net", "matched images"),
    ("images", "nnunet+separate_aug", "nnunet", "its synthetic pairs added to nnU-Net", "matched images"),
    ("images", "separate_aug", "augment", "the recipe on the peer benchmark's splits", "these splits"),
    ("seconds", "nnunet", "augment", "nnU-Net in augment's wall clock", "`augment`'s wall clock"),
    ("seconds", "nnunet+separate_aug", "nnunet", "... with the synthetic pairs", "wall clock"),
]

#: (task, sweep folder under results/, method variant, baseline variant, note)
CLAIMS: list[tuple[str, str, str, str, str]] = [
    # Kvasir polyps, 32 + 8 labelled, 800 steps, 64², 200 test polyps per split
    ("kvasir", "synthesis_pays_kvasir_s800x12", "separate_aug", "augment", "Pix2Pix first, pairs on augment"),
    ("kvasir", "synthesis_pays_kvasir_s800x12", "genseg_aug_fast", "augment", "GenSeg end to end, cheap setting"),
    ("kvasir", "synthesis_pays_kvasir_s800x12", "spade_aug_seg", "augment", "SPADE with its segmentation term"),
    ("kvasir", "synthesis_pays_kvasir_s800gwf6", "genseg_aug_wf", "augment", "GenSeg with weight feedback"),
    ("kvasir", "synthesis_pays_kvasir_s800gf", "genseg_aug", "augment", "GenSeg, the paper's setting"),
    ("kvasir", "synthesis_pays_kvasir_s800spade", "spade_aug", "augment", "SPADE without its term"),
    ("kvasir", "synthesis_pays_kvasir_bf16", "augment_bf16", "augment", "bf16 autocast, 200 steps"),
    ("kvasir", "headroom_kvasir", "augment@64", "augment", "twice the labels (64 vs 32)"),
    # hippocampus 3D, 2 labelled volumes, 400 steps, 146 test volumes over 6 splits
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400lt", "learned_aug_ma", "augment", "learned transforms, all atlases"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400lt", "learned_aug_ma_fm", "augment", "... with FixMatch"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400lt", "fixmatch", "augment", "FixMatch on unlabelled volumes"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400lt", "learned_aug", "augment", "learned transforms, one atlas"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400lt", "learned_aug_ma", "fixmatch", "all atlases vs FixMatch"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400lt", "learned_aug_ma_fm", "fixmatch", "both vs FixMatch"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400", "separate_aug", "augment", "Pix2Pix first, 3D"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400", "genseg_aug", "augment", "GenSeg, the paper's setting, 3D"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400", "genseg_aug_ae16", "augment", "GenSeg, adaptive alpha, 3D"),
    ("hippo3d", "synthesis_pays_hippo3d_n2_s400mf", "separate_aug_mf70", "augment", "Pix2Pix, min_fidelity 0.7"),
    ("hippo3d", "headroom_hippo3d", "augment@4", "augment", "twice the labels (4 vs 2 volumes)"),
    # ISIC skin lesions, 32 + 8 labelled, in domain (26 test images per split)
    ("isic", "synthesis_pays_isic_s1600", "genseg_aug_fast", "augment", "GenSeg cheap setting, 1,600 steps"),
    ("isic", "synthesis_pays_isic_s800", "separate_aug", "augment", "Pix2Pix first"),
    ("isic", "synthesis_pays_isic_s800", "separate_aug_su50", "augment", "... synthetic in the first half only"),
    ("isic", "synthesis_pays_isic_s800spade", "spade_aug_seg", "augment", "SPADE with its segmentation term"),
    ("isic", "headroom_isic", "augment@64", "augment", "twice the labels (64 vs 32)"),
    # ISIC 32 + 8, tested in domain (58 per split) and on PH2 (another clinic, 200 images)
    ("isic", "synthesis_pays_isic_s800ph2", "separate_aug", "augment", "Pix2Pix first; + PH2"),
    ("isic", "synthesis_pays_isic_s800ph2", "genseg_aug_fast", "augment", "GenSeg cheap setting; + PH2"),
    ("isic", "synthesis_pays_isic_s800ph2", "spade_aug_seg", "augment", "SPADE with its segmentation term; + PH2"),
    # JSRT lungs, 7 + 2 labelled, in domain and on the re-styled copy
    ("jsrt", "synthesis_pays_jsrt_s800", "separate_aug", "augment", "Pix2Pix first"),
    ("jsrt", "synthesis_pays_jsrt_s800gf", "genseg_aug_fast", "augment", "GenSeg cheap setting"),
    # JSRT 7 + 2, tested in domain (60 per split) and on Shenzhen (another hospital, 566 X-rays)
    ("jsrt", "synthesis_pays_jsrt_s800sz", "separate_aug", "augment", "Pix2Pix first; + Shenzhen"),
    ("jsrt", "synthesis_pays_jsrt_s800sz", "genseg_aug_fast", "augment", "GenSeg cheap setting; + Shenzhen"),
    ("jsrt", "synthesis_pays_jsrt_s800sz", "fixmatch", "augment", "FixMatch on the split's unused X-rays"),
    # JSRT 7 + 2 with Shenzhen's unlabelled half (the deployment site); tested on its other half and in domain
    ("jsrt", "target_domain_jsrt", "fixmatch_target", "augment", "FixMatch on the target's unlabelled half"),
    ("jsrt", "target_domain_jsrt", "spade_target", "augment", "SPADE painted in the target's styles"),
    ("jsrt", "target_domain_jsrt", "spade_target+fixmatch", "augment", "the two combined"),
    ("jsrt", "target_domain_jsrt", "domain_rand_aug", "augment", "randomised appearance, no target images"),
    # ISIC 32 + 8 with PH2's unlabelled half (the deployment site); tested on its other half and in domain
    ("isic", "target_domain_isic", "fixmatch_target", "augment", "FixMatch on the target's unlabelled half"),
    ("isic", "target_domain_isic", "spade_target", "augment", "SPADE painted in the target's styles"),
    ("isic", "target_domain_isic", "spade_target+fixmatch", "augment", "the two combined"),
    ("isic", "target_domain_isic", "domain_rand_aug", "augment", "randomised appearance, no target images"),
    # nnU-Net v2 as the peer (benchmarks/nnunet_peer.py): matched images, then matched wall clock; Kvasir 32 + 8,
    # JSRT 7 + 2 (in domain and on Shenzhen), ISIC 32 + 8 (and PH2), hippocampus 3D with 2 volumes (a task's rows
    # appear once its sweeps exist)
    *[(task, f"nnunet_peer_{task}/{budget}", variant, baseline, note)
      for task in ("kvasir", "jsrt", "isic", "hippo3d")
      for budget, variant, baseline, note, _ in NNUNET_PEER],
]


def evidence_cells(s: Mapping[str, Any]) -> list[str]:
    """The table cells after a verdict's word, from ``split_effect``'s result (or a row with its keys): mean
    [95 % CI] (no interval under 2 splits), the per-split differences, P(worse), the splits that detect ±2."""
    ci = f"[{points(s['ci_low'])}, {points(s['ci_high'])}]" if math.isfinite(s["ci_low"]) else ""
    pw = f"{100 * s['p_worse']:.0f} %" if math.isfinite(s["p_worse"]) else "–"
    return [f"{points(s['mean'])} {ci}".strip(), ", ".join(points(d) for d in s["split_diffs"]), pw,
            str(s["splits_needed"] or "–")]


def evidence_row(r: Mapping[str, Any]) -> str:
    """One row of the evidence table; a case-level p that could not be computed reads "n/a" in its own cell."""
    p = r["case_wilcoxon_p"]
    case_p = f"{p:.1g}" if math.isfinite(p) else "n/a"
    return (f"| {r['task']} | {r['method']} vs {r['baseline']} ({r['note']}) | {r['test_set']} | **{r['word']}** | "
            f"{' | '.join(evidence_cells(r))} | {case_p} |")


def load(folder: str, variant: str, baseline: str) -> list[dict[str, Any]]:
    """The two variants' records, each relabelled with its variant name; ``augment@K`` is augment at N=K of a
    headroom sweep, relabelled to the baseline's N so that the verdict pairs it with the baseline's runs."""
    root = RESULTS / folder
    if folder.startswith("headroom_"):
        recs = read_jsonl(root / "results.jsonl")
        big = int(variant.split("@")[1])
        base_n = min(int(r["n_train"]) for r in recs)
        return ([{**r, "method": baseline} for r in recs if int(r["n_train"]) == base_n]
                + [{**r, "method": variant, "n_train": base_n} for r in recs if int(r["n_train"]) == big])
    if (root / variant / "results.jsonl").exists():  # synthesis_pays: one sweep folder per variant
        return [{**r, "method": v} for v in (baseline, variant) for r in read_jsonl(root / v / "results.jsonl")]
    # one sweep with every method (nnunet_peer_<task>/images), or one per split (target_domain_<task>/split<s>)
    files = sorted([*root.glob("results.jsonl"), *root.glob("*/results.jsonl")])
    return [r for f in files for r in read_jsonl(f) if r.get("method") in (baseline, variant)]


README = Path(__file__).resolve().parent / "README.md"
HEADING = "## Method-level evidence"


def splice_table(text: str, table: list[str], heading: str = HEADING) -> str:
    """``text`` (a Markdown page) with the first table after ``heading`` replaced by ``table``'s lines."""
    lines = text.split("\n")
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(heading))
        first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("| "))
    except StopIteration:
        raise SystemExit(f"no table after a line starting {heading!r} to replace") from None
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:first] + table + lines[end:])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readme", action="store_true", help=f"also write the table into {README.name}, replacing "
                   f"the one under '{HEADING}'")
    a = p.parse_args(argv)
    rows, by_task = [], {}
    for task, folder, variant, baseline, note in CLAIMS:
        recs = load(folder, variant, baseline)
        for v in verdicts(recs, baselines=(baseline,)):
            if v["method_a"] != variant:
                continue
            s = v["split"]
            row = {"task": task, "folder": folder, "method": variant, "baseline": baseline, "note": note,
                   "test_set": v["test_set"], "n_train": v["n_train"], "word": v["word"], "k": s["k"],
                   "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "boot_low": s["boot_low"],
                   "boot_high": s["boot_high"], "split_diffs": s["split_diffs"], "split_ids": s["split_ids"],
                   "p_worse": s["p_worse"], "split_t_p": s["p_value"], "detectable": s["detectable"],
                   "splits_needed": s["splits_needed"], "case_wilcoxon_p": v["wilcoxon_p"], "n_cases": v["n"],
                   "sentence": v["sentence"]}
            rows.append(row)
            by_task.setdefault(task, []).append(v)
    (RESULTS / "method_evidence.json").write_text(json.dumps({"claims": rows}, indent=1, default=str))
    lines = ["| task | comparison | test set | verdict | mean Δ [95 % CI] | per split | P(worse) | splits for ±2 | "
             "case-level p |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [evidence_row(r) for r in rows]
    (RESULTS / "method_evidence.md").write_text("\n".join(lines) + "\n")
    for task, vs in by_task.items():
        split_differences(vs, RESULTS / f"method_evidence_{task}.png", title=f"{task}: each recipe against its "
                          "baseline, split by split")
    print("\n".join(lines))
    if a.readme:
        README.write_text(splice_table(README.read_text(), lines))
        print(f"\nwritten into {README}")


if __name__ == "__main__":
    main()
