"""Run the CLI on every kind of bad input and record how it fails (issue 14's before/after table).

For each case: exit code, whether the user sees exactly one error line (stderr, log lines excluded;
for ``check-data`` one problem line naming the file), whether a traceback escaped, and whether anything
was left behind (a new or changed entry beside or inside ``--out``, or a hidden partial file).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bad_input_table.py --tag after

writes ``benchmarks/results/bad_input_<tag>.json`` and ``.md``. Runs in-process (one torch import), tiny data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segsynth.cli import main  # noqa: E402
from tests.conftest import write_png_dataset  # noqa: E402
from tests.data.data_builders import make_msd, make_pairs, png_bomb  # noqa: E402

TINY = ["--size", "32", "--steps", "2", "--batch-size", "2", "--val-every", "2", "--unet-features", "4,4,8,8,16,4",
        "--device", "cpu", "-q"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|DEBUG) ")


def snapshot(paths: list[Path]) -> dict[str, float]:
    out: dict[str, float] = {}
    for base in paths:
        if not base.exists():
            continue
        for p in [base, *base.rglob("*")] if base.is_dir() else [base]:
            with contextlib.suppress(OSError):  # folders by existence only (a probe or temp file inside
                out[str(p)] = 0 if p.is_dir() else p.stat().st_mtime_ns  # changes their mtime, not content)
    return out


def run(argv: list[str], watch: list[Path]) -> dict:
    before = snapshot(watch)
    err, out = io.StringIO(), io.StringIO()
    tb = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = int(e.code or 0) if not isinstance(e.code, str) else 2
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc()
            tb, code = True, 1
    text = err.getvalue()
    tb = tb or "Traceback (most recent call last)" in text
    lines = [ln for ln in text.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    after = snapshot(watch)
    changed = sorted(k for k in after if before.get(k) != after[k]) + sorted(f"removed {k}" for k in before
                                                                            if k not in after)
    return {"argv": argv, "exit": code, "stderr_lines": lines, "stdout": out.getvalue(), "traceback": tb,
            "changed": changed}


def build(tmp: Path) -> dict:
    """Datasets and models shared by the cases."""
    d: dict = {}
    d["png"] = write_png_dataset(tmp / "png", n=6)
    d["png_json"] = make_pairs(tmp / "pairs", n=6, shape=(32, 32))
    d["msd"] = make_msd(tmp / "msd", n=6, shape=(32, 32, 32))
    rgb = write_png_dataset(tmp / "rgb", n=4)
    for p in (rgb / "images").glob("*.png"):
        Image.open(p).convert("RGB").save(p)
    d["rgb"] = rgb
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--data", str(d["png"]), "--n", "2", "--method", "none", "--out", str(tmp / "m2d"),
                     *TINY]) == 0
        assert main(["train", "--data", str(d["msd"]), "--n", "2", "--method", "none", "--dims", "3",
                     "--out", str(tmp / "m3d"), *TINY]) == 0
    d["m2d"], d["m3d"] = tmp / "m2d" / "model", tmp / "m3d" / "model"
    return d


def cases(tmp: Path, d: dict):
    """Yield (name, origin, argv, watch paths, check: callable(result) -> extra notes or None)."""
    def copy(src: Path, name: str) -> Path:
        dst = tmp / name
        shutil.copytree(src, dst)
        return dst

    def out(name: str) -> Path:
        return tmp / "outs" / name

    (tmp / "outs").mkdir(exist_ok=True)

    def tr(data: Path, o: Path, *extra: str) -> list[str]:
        return ["train", "--data", str(data), "--n", "2", "--method", "none", "--out", str(o), *TINY, *extra]

    # ---- cases the tests already covered (tests/data/test_bad_input.py, tests/test_cli.py)
    r = copy(d["msd"], "trunc_nifti")
    p = r / "imagesTr" / "vol_001.nii.gz"
    p.write_bytes(p.read_bytes()[:200])
    yield "truncated NIfTI", "tests", tr(r, out("a1"), "--dims", "3"), [out("a1")]
    r = copy(d["png_json"], "bad_png")
    (r / "images" / "img01.png").write_bytes(b"not a png at all")
    yield "unreadable PNG", "tests", tr(r, out("a2")), [out("a2")]
    r = copy(d["png_json"], "empty_file")
    (r / "masks" / "img02.png").write_bytes(b"")
    yield "empty (0-byte) mask", "tests", tr(r, out("a3")), [out("a3")]
    r = copy(d["png_json"], "missing_file")
    (r / "masks" / "img02.png").unlink()
    yield "listed file missing", "tests", tr(r, out("a4")), [out("a4")]
    r = copy(d["png_json"], "size_mismatch")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(r / "masks" / "img00.png")
    yield "image/mask size mismatch", "tests", tr(r, out("a5")), [out("a5")]
    r = copy(d["msd"], "affine")
    import nibabel as nib

    m = np.asarray(nib.load(str(r / "labelsTr" / "vol_000.nii.gz")).dataobj)
    nib.save(nib.Nifti1Image(m, np.diag([2.0, 2.0, 2.0, 1.0])), str(r / "labelsTr" / "vol_000.nii.gz"))
    yield "NIfTI affine mismatch", "tests", tr(r, out("a6"), "--dims", "3"), [out("a6")]
    r = copy(d["png_json"], "value_not_in_map")
    mm = np.zeros((32, 32), np.uint8)
    mm[2:5, 2:5] = 128
    Image.fromarray(mm).save(r / "masks" / "img02.png")
    yield "mask value not in label map", "tests", tr(r, out("a7")), [out("a7")]
    r = copy(d["msd"], "nan")
    img = np.ones((32, 32, 32), np.float32)
    img[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(r / "imagesTr" / "vol_001.nii.gz"))
    yield "NaN intensities", "tests", tr(r, out("a8"), "--dims", "3"), [out("a8")]
    r = tmp / "empty_ds"
    (r / "images").mkdir(parents=True)
    (r / "masks").mkdir()
    yield "empty dataset folder", "tests", tr(r, out("a9")), [out("a9")]
    r = tmp / "empty_pairs"
    r.mkdir()
    (r / "dataset.json").write_text(json.dumps({"pairs": [], "mask_values": {"0": "bg"}}))
    yield "dataset.json with no pairs", "tests", tr(r, out("a10")), [out("a10")]
    yield "more labelled cases than exist", "tests", [*tr(d["png"], out("a11")), "--n", "50"], [out("a11")]
    yield "missing dataset folder", "tests", tr(tmp / "nope", out("a12")), [out("a12")]
    r = copy(d["png_json"], "broken_json")
    (r / "dataset.json").write_text("{not json")
    yield "dataset.json not JSON", "tests", tr(r, out("a13")), [out("a13")]
    yield "unknown method", "tests", ["sweep", "--data", str(d["png"]), "--out", str(out("a14")), "--methods",
                                      "magic", "--n", "1", "--seeds", "1", *TINY], [out("a14")]
    r = copy(d["png"], "cd_bad")
    (r / "images" / "case002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    yield "check-data: truncated PNG", "tests", ["check-data", str(r)], []

    # ---- issue 14
    for where in ("image", "mask"):
        r = copy(d["png"], f"bomb_{where}")
        png_bomb(r / ("images" if where == "image" else "masks") / "case001.png")
        yield f"PNG bomb as {where}: check-data", "issue", ["check-data", str(r)], []
        yield f"PNG bomb as {where}: train", "issue", tr(r, out(f"b_{where}_t")), [out(f"b_{where}_t")]
        yield f"PNG bomb as {where}: sweep", "issue", ["sweep", "--data", str(r), "--out", str(out(f"b_{where}_s")),
                                                      "--methods", "none", "--n", "1", "--seeds", "1", *TINY], \
            [out(f"b_{where}_s")]
    r = tmp / "bomb_in"
    r.mkdir()
    png_bomb(r / "x.png")
    yield "PNG bomb: predict", "issue", ["predict", "--model", str(d["m2d"]), "--input", str(r), "--out",
                                         str(out("b_p")), "--device", "cpu", "-q"], [out("b_p")]
    for label, path in (("../", "../outside.png"), ("absolute", str(d["png"] / "images" / "case000.png"))):
        r = copy(d["png_json"], f"escape_{label.strip('./') or 'up'}")
        shutil.copy(r / "images" / "img00.png", tmp / "outside.png")
        meta = json.loads((r / "dataset.json").read_text())
        meta["pairs"][1]["image"] = path
        (r / "dataset.json").write_text(json.dumps(meta))
        yield f"pairs path {label} leaves the folder: train", "issue", tr(r, out(f"e_{label}")), [out(f"e_{label}")]
        yield f"pairs path {label} leaves the folder: check-data", "issue", ["check-data", str(r)], []
    f = tmp / "outs" / "a_file.txt"
    f.write_text("keep me")
    yield "--out is an existing file: train", "issue", tr(d["png"], f), [f]
    yield "--out is an existing file: predict", "issue", ["predict", "--model", str(d["m2d"]), "--input",
                                                          str(d["png"] / "images"), "--out", str(f), "--device",
                                                          "cpu", "-q"], [f]
    yield "--out in a read-only place (/sys): train", "issue", tr(d["png"], Path("/sys/segsynth_out")), []
    yield "--out under a file (unwritable): train", "issue", tr(d["png"], f / "sub"), [f]
    full = tmp / "outs" / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    yield "train into non-empty --out", "issue", tr(d["png"], full), [full]
    yield "predict into non-empty --out", "issue", ["predict", "--model", str(d["m2d"]), "--input",
                                                    str(d["png"] / "images"), "--out", str(full), "--device", "cpu",
                                                    "-q"], [full]
    exp_full = tmp / "outs" / "exp_full"
    exp_full.mkdir()
    (exp_full / "mine.txt").write_text("keep")
    yield "export into existing --out (message names --overwrite)", "issue", [
        "export", "--data", str(d["png_json"]), "--format", "msd", "--out", str(exp_full)], [exp_full]
    bad_model = copy(d["m2d"], "bad_model")
    (bad_model / "model.json").write_text("{oops")
    yield "model.json not JSON: predict", "issue", ["predict", "--model", str(bad_model), "--input",
                                                    str(d["png"] / "images"), "--out", str(out("mj")), "--device",
                                                    "cpu", "-q"], [out("mj")]
    yield "model.json not JSON: evaluate", "issue", ["evaluate", "--model", str(bad_model), "--data", str(d["png"]),
                                                     "--out", str(out("mj2")), "--device", "cpu", "-q"], [out("mj2")]
    yield "2D model given NIfTI volumes: predict", "issue", ["predict", "--model", str(d["m2d"]), "--input",
                                                             str(d["msd"] / "imagesTr"), "--out", str(out("d1")),
                                                             "--device", "cpu", "-q"], [out("d1")]
    yield "2D model given NIfTI volumes: evaluate", "issue", ["evaluate", "--model", str(d["m2d"]), "--data",
                                                              str(d["msd"]), "--out", str(out("d2")), "--device",
                                                              "cpu", "-q"], [out("d2")]
    yield "3D model given PNGs: predict", "issue", ["predict", "--model", str(d["m3d"]), "--input",
                                                    str(d["png"] / "images"), "--out", str(out("d3")), "--device",
                                                    "cpu", "-q"], [out("d3")]
    yield "3D model given PNGs: evaluate", "issue", ["evaluate", "--model", str(d["m3d"]), "--data", str(d["png"]),
                                                     "--out", str(out("d4")), "--device", "cpu", "-q"], [out("d4")]
    yield "grey model evaluated on RGB data", "issue", ["evaluate", "--model", str(d["m2d"]), "--data",
                                                        str(d["rgb"]), "--out", str(out("g")), "--device", "cpu",
                                                        "-q"], [out("g")]
    r = copy(d["png"], "zero_masks")
    for p in (r / "masks").glob("*.png"):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    yield "train on all-zero masks", "issue", tr(r, out("z")), [out("z")]
    yield "train --steps 0", "issue", [*tr(d["png"], out("s0")), "--steps", "0"], [out("s0")]
    yield "train --n 0", "issue", ["train", "--data", str(d["png"]), "--n", "0", "--out", str(out("n0")), *TINY], \
        [out("n0")]
    r = copy(d["png"], "png16")
    for p in (r / "images").glob("*.png"):
        a = np.asarray(Image.open(p)).astype(np.uint16) * 200
        Image.fromarray(a).save(p)
    yield "16-bit PNG images: check-data says so", "issue", ["check-data", str(r)], []
    r = copy(d["png_json"], "symlink_loop")
    (r / "images" / "img01.png").unlink()
    os.symlink("img01.png", r / "images" / "img01.png")
    yield "symlink loop (pairs): train", "issue", tr(r, out("l1")), [out("l1")]
    yield "symlink loop (pairs): check-data", "issue", ["check-data", str(r)], []
    r = copy(d["png"], "symlink_loop_f")
    (r / "images" / "case001.png").unlink()
    os.symlink("case001.png", r / "images" / "case001.png")
    yield "symlink loop (images/ + masks/): train", "issue", tr(r, out("l2")), [out("l2")]
    small = make_msd(tmp / "msd16", n=6, shape=(16, 16, 16))
    yield "16^3 volumes, too small for the U-Net", "noticed", [*tr(small, out("v16")), "--dims", "3"], [out("v16")]


def judge(name: str, res: dict, t: float) -> dict:
    lines = res["stderr_lines"]
    if res["argv"][0] == "check-data":
        probs = [ln for ln in res["stdout"].splitlines() if ln.startswith("  - ")]
        one = len(probs) >= 1 and res["exit"] == 2
        msg = probs[0].strip() if probs else "(no problem line)"
        if "16-bit" in name:
            one = "16-bit" in res["stdout"]
            msg = next((ln for ln in res["stdout"].splitlines() if "16-bit" in ln or "Intensities" in ln), msg)
    else:
        one = len(lines) == 1 and res["exit"] != 0
        msg = lines[-1] if lines else "(nothing on stderr)"
    return {"case": name, "exit": res["exit"], "one_line": one, "traceback": res["traceback"],
            "leftovers": bool(res["changed"]) and res["exit"] != 0,
            "removed_user_files": any(c.startswith("removed ") for c in res["changed"]), "message": msg[:300], "seconds": round(t, 1),
            "changed": res["changed"][:5]}


def main_(tag: str) -> None:
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="segsynth_bad_") as t:
        tmp = Path(t)
        d = build(tmp)
        for name, origin, argv, watch in cases(tmp, d):
            parents = [w.parent for w in watch]
            t0 = time.perf_counter()
            res = run(argv, [*watch, *parents])
            row = judge(name, res, time.perf_counter() - t0)
            row["origin"] = origin
            rows.append(row)
            print(f"{row['exit']:>3} one={row['one_line']!s:5} tb={row['traceback']!s:5} left={row['leftovers']!s:5}"
                  f" {name}: {row['message'][:150]}", flush=True)
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"bad_input_{tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    yn = {True: "y", False: "n"}
    md = ["| case | from | exit | one line | traceback | leftovers | deleted user files | message |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['case']} | {r['origin']} | {r['exit']} | {yn[r['one_line']]} | {yn[r['traceback']]} | "
           f"{yn[r['leftovers']]} | {yn[r['removed_user_files']]} | {r['message'][:140].replace('|', '/')} |"
           for r in rows]
    (res_dir / f"bad_input_{tag}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {res_dir / f'bad_input_{tag}.md'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="after")
    main_(ap.parse_args().tag)
