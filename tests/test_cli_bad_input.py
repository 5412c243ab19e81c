"""Bad input at the command line (issue 42's leftovers): each ends in one line naming the file, exit code 2,
no traceback, and nothing written."""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segsynth.cli import main
from tests.conftest import write_png_dataset
from tests.data.data_builders import make_msd

TINY = ["--size", "32", "--steps", "2", "--batch-size", "2", "--val-every", "2", "--unet-features", "4,4,8,8,16,4",
        "--device", "cpu", "-q"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|DEBUG) ")  # the CLI's log format (not an error line)


def files_under(*roots: Path) -> dict[str, int]:
    """Every entry under ``roots``: files by modification time, folders by existence (the CLI's write probe
    touches a folder's time, not its content)."""
    return {str(p): 0 if p.is_dir() else p.stat().st_mtime_ns for r in roots if r.exists()
            for p in [r, *r.rglob("*")]}


def run_cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Exit code, the error lines on stderr (log lines aside) and stdout of one in-process CLI run."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, [ln for ln in cap.err.splitlines() if ln.strip() and not LOG_LINE.match(ln)], cap.out


def assert_one_line(code: int, lines: list[str], *names: object) -> str:
    assert code == 2, lines
    assert len(lines) == 1, lines
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def corrupt_nifti_header(path: Path) -> None:
    """sizeof_hdr and the data type code wrong: nibabel logs a WARNING and an ERROR, then raises."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[0:4] = (1234).to_bytes(4, "little")
    raw[70:72] = (4096).to_bytes(2, "little")
    path.write_bytes(gzip.compress(bytes(raw)))


# ------------------------------------------------------------------------------------------ checkpoints

def test_resuming_from_a_checkpoint_that_is_not_weights_only_is_one_line(tmp_path, png_dataset, capsys):
    run = tmp_path / "run"
    last = run / "work" / "checkpoint" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"step": np.arange(3)}, last)  # a numpy array: pickled objects a weights-only load refuses
    before = files_under(run)
    code, lines, _ = run_cli(["train", "--data", png_dataset, "--n", "2", "--method", "none", "--out", run, *TINY],
                             capsys)
    line = assert_one_line(code, lines, last)
    assert "not a checkpoint segsynth wrote" in line and "weights-only" in line
    assert files_under(run) == before  # nothing written, the file left for the user to look at


def test_one_checkpoint_reader_for_the_training_loop_and_the_generator_stages(tmp_path, caplog):
    from segsynth.errors import DataError
    from segsynth.generators.fit_checkpoint import FitCheckpoint
    from segsynth.utils.checkpoint import load_checkpoint

    foreign, damaged = tmp_path / "foreign.pt", tmp_path / "damaged.pt"
    torch.save({"x": np.ones(2)}, foreign)
    torch.save({"x": torch.ones(2)}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:40])
    with pytest.raises(DataError, match="foreign.pt: not a checkpoint segsynth wrote"):
        load_checkpoint(foreign)
    with pytest.raises(DataError, match="damaged.pt: cannot read the checkpoint") as e:
        load_checkpoint(damaged)
    assert "\n" not in str(e.value)
    torch.save({"x": torch.ones(1)}, tmp_path / "ok.pt")
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["x"], torch.ones(1))
    # a generator's stage checkpoint of that kind is logged and the stage trains afresh (its documented rule)
    shutil.copy(foreign, tmp_path / "label_autoencoder.pt")
    stage = FitCheckpoint(tmp_path, "key").stage("label_autoencoder", modules={"m": torch.nn.Linear(1, 1)})
    with caplog.at_level(logging.WARNING):
        assert stage.start == 0 and stage.restore() == {}
    assert "label_autoencoder.pt: not a checkpoint segsynth wrote" in caplog.text


# ------------------------------------------------------------------------------------------ NIfTI header

def test_a_corrupt_nifti_header_gives_only_our_line(tmp_path, capsys, caplog):
    data = make_msd(tmp_path / "msd", n=4, shape=(8, 8, 6))
    bad = data / "imagesTr" / "vol_001.nii.gz"
    corrupt_nifti_header(bad)
    levels = {n: logging.getLogger(n).level for n in ("nibabel", "nibabel.global")}
    with caplog.at_level(logging.DEBUG):
        code, lines, _ = run_cli(["train", "--data", data, "--n", "2", "--out", tmp_path / "o", "--dims", "3",
                                  *TINY], capsys)
    assert_one_line(code, lines, bad, "cannot read NIfTI file")
    assert not [r for r in caplog.records if r.name.startswith("nibabel")]  # nibabel said nothing itself
    assert {n: logging.getLogger(n).level for n in levels} == levels  # and its loggers are as they were
    assert not (tmp_path / "o").exists()


def test_a_corrupt_nifti_header_from_a_shell(tmp_path):
    """The user's view: nibabel's handler writes to the process's stderr, which capsys cannot see."""
    data = make_msd(tmp_path / "msd", n=3, shape=(8, 8, 6))
    bad = data / "labelsTr" / "vol_002.nii.gz"
    corrupt_nifti_header(bad)
    r = subprocess.run([sys.executable, "-m", "segsynth.cli", "check-data", str(data)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "", r.stderr  # no sizeof_hdr / data code lines
    problems = [ln for ln in r.stdout.splitlines() if ln.startswith("  - ")]
    assert len(problems) == 1 and str(bad) in problems[0]


# ------------------------------------------------------------------------------------------ channels

@pytest.fixture(scope="module")
def grey_model(tmp_path_factory):
    """A tiny 2D grey model, trained once for the channel tests."""
    tmp = tmp_path_factory.mktemp("grey")
    data = write_png_dataset(tmp / "png", n=6)
    assert main(["train", "--data", str(data), "--n", "2", "--method", "none", "--out", str(tmp / "m"),
                 *TINY]) == 0
    return tmp / "m" / "model"


@pytest.fixture
def rgb_dataset(tmp_path):
    rgb = write_png_dataset(tmp_path / "rgb", n=6)
    for p in (rgb / "images").glob("*.png"):
        Image.open(p).convert("RGB").save(p)
    return rgb


def test_weights_for_other_input_channels_are_one_line(tmp_path, grey_model, rgb_dataset, capsys):
    model = tmp_path / "edited"
    shutil.copytree(grey_model, model)
    cfg = json.loads((model / "model.json").read_text())
    cfg["segmenter"]["in_channels"] = 3  # told it takes RGB: the saved first convolution takes 1 channel
    (model / "model.json").write_text(json.dumps(cfg))
    code, lines, _ = run_cli(["evaluate", "--model", model, "--data", rgb_dataset, "--out", tmp_path / "ev",
                              "--device", "cpu", "-q"], capsys)
    line = assert_one_line(code, lines, model, "do not fit the saved configuration", "conv_0")
    assert "(4, 1, 3, 3) in the weights but (4, 3, 3, 3) in the configuration" in line
    assert not (tmp_path / "ev").exists()


def test_audit_with_a_grey_model_on_rgb_images_is_one_line(tmp_path, grey_model, rgb_dataset, capsys):
    code, lines, _ = run_cli(["audit", "--synthetic", rgb_dataset, "--data", rgb_dataset, "--fidelity-model",
                              grey_model, "--out", tmp_path / "au", "--device", "cpu", "-q"], capsys)
    assert_one_line(code, lines, rgb_dataset, "RGB (3 channels)", "grey (1 channel)")
    assert not (tmp_path / "au").exists()


def test_a_grey_checkpoint_resumed_on_rgb_images_is_one_line(tmp_path, png_dataset, rgb_dataset, capsys):
    from segsynth.data.dataset import load_dataset
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.sources import CaseSource
    from segsynth.segment.train import TrainConfig, train_segmenter

    cfg = TrainConfig(steps=2, batch_size=2, val_every=2, progress=False)
    grey = load_dataset(png_dataset, progress=False).cases
    kw = {"features": (4, 4, 8, 8, 16, 4)}
    train_segmenter(build_segmenter("unet", 2, 1, 2, **kw), CaseSource(grey[:2]), grey[2:3], cfg, num_classes=2,
                    checkpoint_dir=tmp_path)
    rgb = load_dataset(rgb_dataset, progress=False).cases
    from segsynth.errors import DataError

    with pytest.raises(DataError) as e:
        train_segmenter(build_segmenter("unet", 2, 3, 2, **kw), CaseSource(rgb[:2]), rgb[2:3], cfg, num_classes=2,
                        checkpoint_dir=tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'last.pt'}: checkpoint weights do not fit")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ empty masks

def test_check_data_and_train_agree_on_background_only_masks(tmp_path, png_dataset, capsys):
    zero = tmp_path / "zero"
    shutil.copytree(png_dataset, zero)
    for p in (zero / "masks").glob("*.png"):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    code, _, out = run_cli(["check-data", zero], capsys)
    problems = [ln.strip()[2:] for ln in out.splitlines() if ln.startswith("  - ")]
    assert code == 2 and "Problems: none" not in out
    assert len(problems) == 1 and "background only" in problems[0] and str(zero) in problems[0]
    code, lines, _ = run_cli(["train", "--data", zero, "--n", "2", "--out", tmp_path / "o", *TINY], capsys)
    line = assert_one_line(code, lines, zero)
    assert line.endswith(problems[0])  # the same rule, the same words
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ too small

def test_volumes_too_small_for_the_unet_name_a_file_and_the_minimum(tmp_path, capsys):
    small = make_msd(tmp_path / "msd16", n=6, shape=(16, 16, 16))
    code, lines, _ = run_cli(["train", "--data", small, "--n", "2", "--method", "none", "--dims", "3", "--out",
                              tmp_path / "o", *TINY], capsys)
    line = assert_one_line(code, lines, small / "imagesTr", ".nii.gz", "16x16x16", "at least 32", "--shape-3d")
    assert not (tmp_path / "o").exists()
    # a saved 3D model given such volumes: evaluate and predict say the same, without the training options
    big = make_msd(tmp_path / "msd32", n=4, shape=(32, 32, 32))
    assert main(["train", "--data", str(big), "--n", "2", "--n-val", "1", "--method", "none", "--dims", "3",
                 "--out", str(tmp_path / "m3d"), *TINY]) == 0
    model = tmp_path / "m3d" / "model"
    for argv in (["evaluate", "--model", model, "--data", small, "--out", tmp_path / "ev"],
                 ["predict", "--model", model, "--input", small / "imagesTr", "--out", tmp_path / "pr"]):
        code, lines, _ = run_cli([*argv, "--device", "cpu", "-q"], capsys)
        line = assert_one_line(code, lines, small / "imagesTr", "16x16x16", "at least 32")
        assert "--shape-3d" not in line
        assert not Path(argv[-1]).exists()
