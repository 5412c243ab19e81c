"""The HTML report and the terminal table from synthetic sweep records."""

from __future__ import annotations

import base64
import re

import numpy as np

from segsynth.experiments.report import format_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(with_failure: bool = False) -> list[dict]:
    """2 methods x N in {1, 2} x 2 seeds x 3 test cases; "gen" is better by ~0.1 Dice."""
    rng = np.random.default_rng(0)
    out = []
    for n in (1, 2):
        for seed in (0, 1):
            for method, shift in (("none", 0.0), ("gen", 0.1)):
                per_case = []
                for c in range(3):
                    d = float(np.clip(0.5 + 0.1 * n + shift + 0.05 * rng.standard_normal(), 0, 1))
                    h = float(10.0 - 3 * n - 10 * shift + rng.random())
                    per_case.append(
                        {
                            "case_id": f"case{c}",
                            "dice": {"lung": d},
                            "hd95": {"lung": h},
                            "dice_mean": d,
                            "hd95_mean": h,
                            "hd95_unit": "voxel",
                        }
                    )
                out.append(
                    {
                        "dataset": "toy",
                        "test_set": "toy",
                        "method": method,
                        "n_train": n,
                        "seed": seed,
                        "segmenter": "unet",
                        "labels": {"1": "lung"},
                        "val_dice": 0.7,
                        "train_seconds": 3.0,
                        "seconds": 4.0,
                        "peak_memory_mb": 321.0,
                        "dice_mean": float(np.mean([c["dice_mean"] for c in per_case])),
                        "hd95_mean": float(np.mean([c["hd95_mean"] for c in per_case])),
                        "per_case": per_case,
                        "status": "ok",
                    }
                )
    if with_failure:
        out.append(
            {
                "dataset": "toy",
                "test_set": "toy",
                "method": "gen",
                "n_train": 2,
                "seed": 2,
                "segmenter": "unet",
                "status": "failed",
                "error": "RuntimeError: <out of memory>",
            }
        )
    return out


def test_report_is_self_contained(tmp_path):
    sample = tmp_path / "sample_case0.png"
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(sample)
    path = write_report(
        _records(with_failure=True), tmp_path / "rep", title="Toy sweep", sample_images=[sample]
    )
    assert path.name == "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")

    # Summary sentence with the best method, N and a p-value.
    summary = re.search(r'<div class="summary">(.*?)</div>', text, re.S).group(1)
    assert "On <b>toy</b>, with N=2" in summary and "<b>gen</b>" in summary and "p=" in summary

    # Tables: both N, both methods, mean ± sd, CI, Wilcoxon and t-test columns with numeric p-values.
    assert "N = 1 labelled training case<" in text and "N = 2 labelled training cases" in text
    assert "Wilcoxon p" in text and "t-test p" in text and "95% CI" in text
    assert re.search(r"<td>0\.\d{3} ± 0\.\d{3}</td>", text)
    p_cells = re.findall(r"<td(?: class=\"sig\")?>(&lt;0\.001|0\.\d+)</td>", text)
    assert len(p_cells) >= 4
    assert "Per-class Dice" in text and "peak MB" in text and "321" in text

    # Failed run is shown (escaped), not fatal.
    assert "Failed runs" in text and "RuntimeError: &lt;out of memory&gt;" in text and "+1 failed" in text

    # The verdict at the level of the split: its sentences, its table and the per-split plot.
    verdict = re.search(r'<div class="summary verdict">(.*?)</div>', text, re.S).group(1)
    assert "the split is the unit" in verdict and "gen vs none: " in verdict
    assert "The split-level evidence behind the verdict" in text and "P(worse, new split)" in text

    # Embedded PNGs (the two curves, the per-split verdict plot, the sample) decode to real PNG files; no external
    # references.
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in images)
    assert not re.search(r'src="(?!data:)', text) and "<script" not in text
    # The curves also lie beside the HTML.
    for name in ("dice_curve.png", "hd95_curve.png", "verdict_splits.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]


def test_report_all_failed_and_missing_sample(tmp_path):
    recs = [
        {
            "dataset": "toy",
            "test_set": "toy",
            "method": "none",
            "n_train": 1,
            "seed": 0,
            "segmenter": "unet",
            "status": "failed",
            "error": "bad data",
        }
    ]
    path = write_report(recs, tmp_path, title="Broken", sample_images={"x": tmp_path / "nope.png"})
    text = path.read_text(encoding="utf-8")
    assert "no run finished" in text and "all runs failed" in text and "bad data" in text
    assert "missing image" in text


def test_format_table():
    table = format_table(_records(with_failure=True))
    lines = table.splitlines()
    assert lines[0].startswith("toy") and "Dice" in lines[0]
    header = lines[2].split()
    assert header == ["method", "N=1", "N=2"]
    rows = {ln.split()[0]: ln for ln in lines[3:]}
    assert set(rows) == {"none", "gen"}
    assert re.search(r"0\.\d{3} ± 0\.\d{3}", rows["none"]) and "[1 failed]" in rows["gen"]
    assert format_table([]) == "(no runs)"


def test_report_with_external_test_set(tmp_path):
    recs = _records()
    external = [{**r, "test_set": "other_lungs"} for r in recs]
    for r in recs:
        r["test_set"] = "in-domain"
    path = write_report(recs + external, tmp_path, title="Two test sets", baseline="none")
    text = path.read_text(encoding="utf-8")
    assert "toy · held-out test cases · segmenter unet" in text
    assert "toy · tested on other_lungs (out of domain) · segmenter unet" in text
    assert "On <b>toy</b> tested on <b>other_lungs</b>, with N=2" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))  # two curves per test set, one verdict plot for both
    assert len(pngs) == 5 and all(name.startswith(("dice_curve_", "hd95_curve_", "verdict_splits")) for name in pngs)
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 5
    blocks = format_table(recs + external).split("\n\n")
    assert len(blocks) == 2 and "other_lungs" in blocks[1]


def test_dice_confidence_intervals_stay_in_0_1():
    import math

    from segsynth.experiments.report import _dice_ci

    assert _dice_ci(0.2, 0.4) == "[0.200, 0.400]"
    assert _dice_ci(0.62, 1.31) == "[0.620, 1.000*]"  # two seeds: a t interval reaches past 1
    assert _dice_ci(-0.4, 0.3) == "[0.000*, 0.300]"
    assert _dice_ci(math.nan, math.nan) == "[–, –]"


def test_report_says_where_runs_were_computed_and_warns_when_it_differs(tmp_path):
    records = _records()
    same = [{**r, "device": "cpu", "threads": 2, "cpu": "AMD EPYC (avx2)"} for r in records]
    text = write_report(same, tmp_path / "same", title="t").read_text(encoding="utf-8")
    meta = re.search(r'<div class="meta">(.*?)</div>', text, re.S).group(1)
    assert "computed on AMD EPYC (avx2), 2 threads" in meta and "different" not in meta

    # one run from another thread count, one from before records said where: three groups, and a warning
    mixed = [*same[:-2], {**same[-2], "threads": 1}, {k: v for k, v in same[-1].items() if k != "threads"}]
    text = write_report(mixed, tmp_path / "mixed", title="t").read_text(encoding="utf-8")
    meta = re.search(r'<div class="meta">(.*?)</div>', text, re.S).group(1)
    assert "computed on 3 different machines or thread counts" in meta
    assert "AMD EPYC (avx2), 2 threads: 6 runs" in meta and "AMD EPYC (avx2), 1 thread: 1 run" in meta
    assert "machine not recorded: 1 run" in meta and "seconds are not comparable" in meta
