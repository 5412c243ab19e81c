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


def test_methods_name_prints_its_options_with_defaults_and_their_docs(capsys):
    assert main(["methods", "genseg_aug", "transfer"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["gen_every", "1"] in lines and ["augment_real", "true"] in lines and ["num_downs", "auto"] in lines
    assert ["init", "required"] in lines
    assert "gen_every: one GAN update of the generator" in out  # GenSegOptions' docstring explains them
    assert out.index("genseg_aug:") < out.index("transfer:")
    assert main(["methods", "augment", "magic"]) == 2
    captured = capsys.readouterr()
    assert "magic" in captured.err and captured.out == ""  # an unknown name fails before anything is printed


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


def test_help_shows_defaults_and_the_genseg_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for text in ("(default: 500)", "(default: 8)", "(default: 0.001)", "(default: 2)", "--threads", "--overwrite"):
        assert text in out, text
    with pytest.raises(SystemExit):
        main(["genseg", "--help"])
    out = capsys.readouterr().out
    assert "see GenSegOptions" not in out
    assert "pretrain_steps=300" in out and "synthetic_fraction=0.5" in out and "search=true" in out


def test_bad_counts_are_refused_before_any_work(tmp_path, png_dataset, capsys):
    out = tmp_path / "o"
    assert main(["train", "--data", str(png_dataset), "--out", str(out), "--n", "0", *TINY]) == 2
    err = capsys.readouterr().err
    assert str(png_dataset) in err and "--n 0" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--data", str(png_dataset), "--out", str(out), "--n", "2", *TINY, "--steps", "0"]) == 2
    assert "--steps must be > 0" in capsys.readouterr().err
    assert main(["sweep", "--data", str(png_dataset), "--out", str(out), "--n", "0,1", *TINY]) == 2
    assert "--n 0" in capsys.readouterr().err
    assert not out.exists()


def test_unusable_out_is_one_line(tmp_path, png_dataset, capsys):
    afile = tmp_path / "a_file"
    afile.write_text("keep")
    for out, expect in ((afile, "is a file, not a folder"), (afile / "sub", "is a file, not a folder")):
        assert main(["train", "--data", str(png_dataset), "--out", str(out), "--n", "2", *TINY]) == 2
        err = capsys.readouterr().err
        assert expect in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert afile.read_text() == "keep"


def test_out_in_a_folder_that_refuses_writes(tmp_path, monkeypatch, capsys):
    """A read-only folder (root ignores permission bits, so the refusal is simulated where it happens)."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    ro = tmp_path / "ro"
    ro.mkdir()
    assert main(["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path), "--out", str(ro / "o"),
                 "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"--out {ro / 'o'}: cannot write in {ro} (Permission denied)" in err and len(err.strip().splitlines()) == 1
    assert not (ro / "o").exists()


def test_train_and_predict_refuse_a_non_empty_out_without_overwrite(tmp_path, png_dataset, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    args = ["train", "--data", str(png_dataset), "--out", str(run), "--n", "2", "--method", "none", *TINY]
    assert main(args) == 2
    assert "not empty (notes.txt); pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0 and (run / "model" / "model.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    import json  # the saved model says where it was trained
    assert json.loads((run / "model" / "model.json").read_text())["trained_on"]["device"] == "cpu"
    summary = json.loads((run / "summary.json").read_text())  # what the run cost and scored, in one file
    metrics = json.loads((run / "test_metrics" / "metrics.json").read_text())["summary"]
    assert summary["method"] == "none" and summary["n_train"] == 2 and summary["device"] == "cpu"
    assert summary["test_dice"] == metrics["dice_mean"] and summary["n_test"] == metrics["n_cases"] > 0
    assert summary["train_seconds"] > 0 and 0 <= summary["val_dice"] <= 1 and summary["threads"] >= 1
    (run / "model" / "stale.bin").write_text("from an older run")  # --overwrite replaces the previous outputs
    assert main([*args, "--overwrite"]) == 0
    assert not (run / "model" / "stale.bin").exists() and (run / "model" / "model.json").exists()
    assert (run / "notes.txt").read_text() == "mine" and (run / "test_metrics" / "metrics.csv").exists()
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "keep.txt").write_text("mine")
    pargs = ["predict", "--model", str(run / "model"), "--input", str(png_dataset / "images"), "--out", str(pred),
             "--device", "cpu", "-q"]
    assert main(pargs) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (pred / "keep.txt").exists()
    assert main([*pargs, "--overwrite"]) == 0 and len(list(pred.glob("*.png"))) == 10
    # a broken model.json, and images the model cannot take: one line each
    (run / "model" / "model.json").write_text("{oops")
    assert main([*pargs, "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert "model.json: cannot read the model configuration" in err and len(err.strip().splitlines()) == 1


def test_model_input_checks():
    from segsynth.errors import DataError
    from segsynth.segment.model_io import check_input_fits

    cfg2d = {"segmenter": {"spatial_dims": 2, "in_channels": 1}, "spec": {"spatial_dims": None}}
    cfg_sliced = {"segmenter": {"spatial_dims": 2, "in_channels": 1}, "spec": {"spatial_dims": 2}}
    cfg3d = {"segmenter": {"spatial_dims": 3, "in_channels": 1}, "spec": {"spatial_dims": None}}
    check_input_fits(cfg2d, 2, 1, "d", "m")
    check_input_fits(cfg_sliced, 3, 1, "d", "m")  # a 2D model trained on slices takes volumes
    with pytest.raises(DataError, match="d: these are 3D images but the model \\(m\\) is a 2D model"):
        check_input_fits(cfg2d, 3, 1, "d", "m")
    with pytest.raises(DataError, match="these are 2D images but the model \\(m\\) is a 3D model"):
        check_input_fits(cfg3d, 2, 1, "d", "m")
    with pytest.raises(DataError, match="RGB \\(3 channels\\) but the model \\(m\\) was trained on grey"):
        check_input_fits(cfg2d, 2, 3, "d", "m")


def test_threads_are_chosen_and_logged(tmp_path, caplog):
    import logging

    import torch

    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="segsynth"):
            main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(tmp_path), "--out",
                  str(tmp_path / "o"), "--threads", "1"])
        assert torch.get_num_threads() == 1
        assert any("using 1 CPU thread (--threads 1" in r.getMessage() for r in caplog.records)
    finally:
        torch.set_num_threads(before)


def test_synthesize_keeps_the_source_mask_values(tmp_path):
    """0/255 masks in, 0/255 masks out: the synthetic dataset stores what its source stored."""
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.generators.genseg import GenSegGenerator
    from tests.generators.genseg.helpers import TINY as GEN_TINY

    data = write_png_dataset(tmp_path / "blobs", n=3)
    loaded = load_dataset(data, PreprocessSpec(size=32), progress=False)
    gen = GenSegGenerator(**GEN_TINY)
    gen.build_for(loaded.cases, seed=0, info=loaded.info)
    gen.save(tmp_path / "generator")
    out = tmp_path / "syn"
    assert main(["synthesize", "--model", str(tmp_path / "generator"), "--augment-from", str(data), "--n", "2",
                 "--out", str(out), "--device", "cpu", "-q"]) == 0
    import json

    assert json.loads((out / "dataset.json").read_text())["mask_values"] == {"0": "background", "255": "class_255"}
    from segsynth.data.io import read_mask

    values = set()
    for p in sorted((out / "masks").iterdir()):
        values |= set(np.unique(read_mask(p)[0]).tolist())
    assert values == {0, 255}
