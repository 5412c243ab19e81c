"""The command-line app: help texts, exit codes, and a train -> evaluate -> predict round trip."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segsynth.cli import build_parser, main
from tests.conftest import write_png_dataset

TINY = ["--size", "32", "--steps", "4", "--batch-size", "2", "--val-every", "2", "--unet-features", "4,4,8,8,16,4",
        "--device", "cpu", "-q"]


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"demo", "train", "evaluate", "predict", "sweep", "check-data"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert len(capsys.readouterr().out) > 100


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "segsynth.cli", "methods"], capture_output=True, text=True)
    assert proc.returncode == 0 and "augment" in proc.stdout


def test_missing_folder_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["sweep", "--data", str(missing), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "error" in err
    assert not (tmp_path / "o" / "report.html").exists()


def test_unknown_method_exits_2(tmp_path, png_dataset, capsys):
    assert main(["sweep", "--data", str(png_dataset), "--out", str(tmp_path / "o"), "--methods", "magic", *TINY]) == 2
    assert "magic" in capsys.readouterr().err


def test_too_many_labelled_cases_exits_2(tmp_path, png_dataset, capsys):
    assert main(["train", "--data", str(png_dataset), "--out", str(tmp_path / "o"), "--n", "50", *TINY]) == 2
    assert "only" in capsys.readouterr().err


def test_check_data_good_and_bad(tmp_path, png_dataset, capsys):
    assert main(["check-data", str(png_dataset)]) == 0
    out = capsys.readouterr().out
    assert "10" in out
    bad = write_png_dataset(tmp_path / "bad", n=3)
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(bad / "masks" / "case001.png")  # 128 not in {0,255}
    (bad / "images" / "case002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # truncated file
    assert main(["check-data", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "case002" in out


def test_train_evaluate_predict_round_trip(tmp_path, png_dataset, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(png_dataset), "--out", str(out), "--n", "3", "--method", "augment",
                 *TINY]) == 0
    assert (out / "model" / "model.safetensors").exists()
    assert (out / "test_metrics" / "metrics.csv").exists()
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(png_dataset), "--out",
                 str(tmp_path / "ev"), "--device", "cpu", "-q"]) == 0
    assert (tmp_path / "ev" / "metrics.json").exists()
    # predict writes masks in the input's format, size and value convention (0/255)
    big = write_png_dataset(tmp_path / "big", n=2, size=(48, 40))
    assert main(["predict", "--model", str(out / "model"), "--input", str(big / "images"), "--out",
                 str(tmp_path / "pred"), "--device", "cpu", "-q"]) == 0
    preds = sorted((tmp_path / "pred").glob("*.png"))
    assert [p.name for p in preds] == ["case000.png", "case001.png"]
    arr = np.asarray(Image.open(preds[0]))
    assert arr.shape == (48, 40) and set(np.unique(arr)) <= {0, 255}


def test_sweep_cli_with_external_test_data(tmp_path, capsys):
    a = write_png_dataset(tmp_path / "a", n=8)
    b = write_png_dataset(tmp_path / "b", n=4, seed=3, contrast=0.6, prefix="ext")
    assert main(["sweep", "--data", str(a), "--test-data", str(b), "--out", str(tmp_path / "s"), "--methods",
                 "none,augment", "--n", "1,2", "--seeds", "1", "--n-test", "3", *TINY]) == 0
    out = capsys.readouterr().out
    assert "augment" in out and "report.html" in out
    assert (tmp_path / "s" / "report.html").exists()
