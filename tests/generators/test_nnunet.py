"""nnU-Net v2 as a sweep method, with nnU-Net itself as the client: its dataset check reads what
``segsynth export --format nnunet`` writes, and a sweep trains and predicts with it end to end.

Tests that run nnU-Net skip without nnunetv2 (``make test`` installs the ``nnunet`` extra, so CI runs them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from segsynth.cli import main
from segsynth.errors import ConfigError
from segsynth.generators import METHODS, get_method
from segsynth.generators.nnunet import NnUNetGeneratorMethod, nnunet_available, real_cases_batch, schedule
from segsynth.segment.train import TrainConfig
from tests.conftest import write_png_dataset
from tests.data.data_builders import make_msd

needs_nnunet = pytest.mark.skipif(not nnunet_available(), reason="nnunetv2 is not installed: "
                                  "pip install 'segsynth[nnunet]' (make test installs it)")
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA")


def test_listed_and_refused_in_one_line_without_the_extra(tmp_path, monkeypatch, capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "nnunet " in listed and "nnunet+separate_aug" in listed
    monkeypatch.setattr("segsynth.generators.nnunet.nnunet_available", lambda: False)
    data = write_png_dataset(tmp_path / "d", n=6)
    code = main(["sweep", "--data", str(data), "--methods", "augment,nnunet", "--n", "1", "--seeds", "1",
                 "--out", str(tmp_path / "out"), "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and 'pip install "segsynth[nnunet]"' in err
    assert not (tmp_path / "out" / "results.jsonl").exists()  # refused before any run


def test_budgets():
    cfg = TrainConfig(steps=20, batch_size=4)  # the sweep's other runs see 80 images
    opts = get_method("nnunet").option_values()
    b = schedule(opts, cfg, nnunet_batch=6, seconds=None)
    assert b["budget"] == "images" and b["matched_images"] == 80
    assert (b["epochs"], b["iterations_per_epoch"], b["val_iterations_per_epoch"]) == (1, 14, 3)  # ceil(80 / 6)
    b = schedule({**opts, "iterations_per_epoch": 5}, cfg, nnunet_batch=6, seconds=None)
    assert (b["epochs"], b["iterations_per_epoch"]) == (3, 5)  # >= 80 images in whole epochs
    b = schedule({**opts, "budget": "epochs"}, cfg, nnunet_batch=6, seconds=None)
    assert (b["epochs"], b["iterations_per_epoch"], b["val_iterations_per_epoch"]) == (1000, 250, 50)  # nnU-Net's
    b = schedule({**opts, "budget": "seconds"}, cfg, nnunet_batch=6, seconds=12.5)
    assert b["seconds"] == 12.5 and b["iterations_per_epoch"] == 14
    with pytest.raises(ConfigError, match="budget"):
        get_method("nnunet", budget="steps")
    with pytest.raises(ConfigError, match="unknown options"):
        get_method("nnunet", n_synthetic=3)  # only nnunet+GENERATOR takes it


def test_nnunet_plus_generator_names_and_options():
    m = get_method("nnunet+spade", n_synthetic=3, budget="seconds", seconds=5, spade_steps=7)
    assert isinstance(m, NnUNetGeneratorMethod) and m.name == "nnunet+spade"
    assert m.inner_name == "spade" and m.inner_options == {"spade_steps": 7}  # the rest goes to the generator
    assert m.option_values()["n_synthetic"] == 3 and m.makes_synthetic_pairs()
    generic = get_method("nnunet+separate")  # any generator method, registered by name or not
    assert generic.name == "nnunet+separate" and "nnunet+separate" not in METHODS
    with pytest.raises(ConfigError, match="makes no synthetic pairs"):
        get_method("nnunet+augment")


def test_batch_for_the_real_cases_alone():
    """nnunet+GENERATOR keeps the batch nnU-Net plans for the real cases (its 5 %-of-the-dataset cap would grow
    with the synthetic pairs; Kvasir 32 + 8 with 32 pairs: planned 4, real 2), so only the training set differs."""
    plans = {"original_median_shape_after_transp": [1, 64, 64],
             "configurations": {"2d": {"batch_size": 4, "patch_size": [64, 64]}}}
    assert real_cases_batch(plans, "2d", n_real=40, n_all=72) == 2  # round(40 * 4096 * 0.05 / 4096)
    assert real_cases_batch(plans, "2d", n_real=72, n_all=72) == 4  # nothing synthetic: the plan
    assert real_cases_batch(plans, "2d", n_real=9, n_all=41) == 2  # never below nnU-Net's minimum, 2
    big = {**plans, "configurations": {"2d": {"batch_size": 12, "patch_size": [64, 64]}}}
    assert real_cases_batch(big, "2d", n_real=400, n_all=800) == 12  # a memory-bound plan stays
    assert get_method("nnunet").option_values()["batch_size"] == "plan"
    assert get_method("nnunet+spade").option_values()["batch_size"] == "real"
    assert get_method("nnunet+spade", batch_size="plan").option_values()["batch_size"] == "plan"
    assert get_method("nnunet", batch_size=3).option_values()["batch_size"] == 3
    with pytest.raises(ConfigError, match="batch_size"):
        get_method("nnunet", batch_size="large")


def _verify(folder) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem nnU-Net finds


@needs_nnunet
def test_export_passes_nnunets_own_check_2d_png(tmp_path):
    data = write_png_dataset(tmp_path / "blobs", n=4)
    assert main(["export", "--data", str(data), "--format", "nnunet", "--dataset-id", "12", "--file-ending",
                 ".png", "--out", str(tmp_path / "raw")]) == 0
    folder = next((tmp_path / "raw").glob("Dataset012_*"))
    assert json.loads((folder / "dataset.json").read_text())["file_ending"] == ".png"
    _verify(folder)


@needs_nnunet
def test_export_passes_nnunets_own_check_3d_nifti(tmp_path):
    data = make_msd(tmp_path / "msd", n=3, shape=(10, 12, 8))
    assert main(["export", "--data", str(data), "--format", "nnunet", "--dataset-id", "13",
                 "--out", str(tmp_path / "raw")]) == 0
    folder = next((tmp_path / "raw").glob("Dataset013_*"))
    assert len(list((folder / "imagesTr").glob("*_0000.nii.gz"))) == 3
    _verify(folder)


def test_logged_epoch_seconds_sums_every_training_log(tmp_path):
    """A resumed run's earlier cost: nnU-Net's "Epoch time" lines over all its training logs (one per process)."""
    from segsynth.generators.nnunet import logged_epoch_seconds

    assert logged_epoch_seconds(tmp_path) == 0.0  # trained here from scratch: nothing earlier
    (tmp_path / "training_log_2026_12_7_01_04_36.txt").write_text(
        "2026-12-07 01:04:36.168330: Epoch 0 \n2026-12-07 01:14:45.182243: Epoch time: 609.01 s \n"
        "2026-12-07 01:14:45.964634: Epoch 1 \n2026-12-07 01:26:44.322531: Epoch time: 718.36 s \n")
    (tmp_path / "training_log_2026_12_7_02_00_00.txt").write_text("x: Epoch 2 \nx: Epoch time: 10.5 s \n")
    (tmp_path / "debug.json").write_text("Epoch time: 99 s")  # not a training log
    assert logged_epoch_seconds(tmp_path) == pytest.approx(609.01 + 718.36 + 10.5)


def test_subprocess_peak_memory_outlives_the_process_that_measured_it(tmp_path):
    """A run resumed by a new process (its training finished in the killed one) still reports the peak memory of
    the subprocesses the earlier process ran, and the planning seconds it spent: both are kept in costs.json."""
    from segsynth.generators.nnunet import NnUNetRun

    first = NnUNetRun(tmp_path, torch.device("cpu"))
    assert first.peak_rss_mb == 0.0 and first.costs() == {}  # nothing run yet
    first.call("faulthandler:enable", [], "probe")  # a real subprocess: a Python interpreter, some MB resident
    assert first.peak_rss_mb > 1.0
    first.remember(plan_seconds=12.5)
    resumed = NnUNetRun(tmp_path, torch.device("cpu"))  # the next process's view of the same run folder
    assert resumed.peak_rss_mb == pytest.approx(first.peak_rss_mb)
    assert resumed.costs() == {"peak_rss_mb": pytest.approx(first.peak_rss_mb), "plan_seconds": 12.5}
    assert "$ faulthandler:enable" in (tmp_path / "logs" / "probe.log").read_text()


@needs_nnunet
@pytest.mark.slow
def test_sweep_with_nnunet_end_to_end(tmp_path):
    """augment and nnunet on the same split: nnU-Net plans, trains one short epoch, predicts; the records pair."""
    data = write_png_dataset(tmp_path / "blobs", n=8)
    out = tmp_path / "sweep"
    before = {k: os.environ.get(k) for k in NNUNET_ENV}
    assert main(["sweep", "--data", str(data), "--methods", "augment,nnunet", "--n", "2", "--n-val", "2",
                 "--seeds", "1", "--steps", "4", "--batch-size", "2", "--size", "32", "--threads", "1",
                 "--no-fidelity", "--method-opt", "nnunet.iterations_per_epoch=2", "--out", str(out)]) == 0
    assert {k: os.environ.get(k) for k in NNUNET_ENV} == before  # nothing set in this process
    records = {r["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    nn, aug = records["nnunet"], records["augment"]
    assert nn["status"] == "ok", nn.get("error")
    assert [p["case_id"] for p in nn["per_case"]] == [p["case_id"] for p in aug["per_case"]]  # paired
    assert nn["train_ids"] == aug["train_ids"] and nn["val_ids"] == aug["val_ids"]
    assert 0.0 <= nn["dice_mean"] <= 1.0 and np.isfinite(nn["val_dice"])
    b = nn["nnunet_budget"]
    assert b["budget"] == "images" and b["matched_images"] == 8 and b["iterations_per_epoch"] == 2
    assert b["epochs_run"] == b["epochs"] and b["images_seen"] >= 8
    run = out / "runs" / "nnunet_n2_s0" / "nnunet"
    assert (run / "raw" / "Dataset501_segsynth" / "dataset.json").exists()
    split = json.loads((run / "preprocessed" / "Dataset501_segsynth" / "splits_final.json").read_text())
    assert split == [{"train": ["tr_0000", "tr_0001"], "val": ["val_0000", "val_0001"]}]  # the sweep's own split
    fold = run / "results" / "Dataset501_segsynth" / "nnUNetTrainerSegsynthBudget__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").exists() and (fold / "validation" / "summary.json").exists()


@needs_nnunet
@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
def test_sweep_augment_and_nnunet_on_the_shipped_sample(tmp_path, dims):
    """The issue's 'done when': ``segsynth sweep --methods augment,nnunet`` on the sample the package ships
    (hippocampus MRI: 2D slices, and the 3D volumes through nnU-Net's 3d_fullres)."""
    from segsynth.data.sample import sample_path

    out = tmp_path / f"sweep{dims}d"
    shape = ["--size", "32"] if dims == 2 else ["--shape-3d", "32,32,32"]
    assert main(["sweep", "--data", str(sample_path()), "--dims", str(dims), *shape, "--methods", "augment,nnunet",
                 "--n", "2", "--n-val", "2", "--n-test", "3", "--seeds", "1", "--steps", "2", "--batch-size", "2",
                 "--threads", "1", "--no-fidelity", "--method-opt", "nnunet.iterations_per_epoch=2",
                 "--method-opt", "nnunet.batch_size=3", "--out", str(out)]) == 0
    records = {r["method"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    nn, aug = records["nnunet"], records["augment"]
    assert nn["status"] == "ok", nn.get("error")
    assert [p["case_id"] for p in nn["per_case"]] == [p["case_id"] for p in aug["per_case"]]
    assert nn["nnunet_budget"]["batch_size"] == 3 and nn["nnunet_budget"]["images_seen"] == 2 * 3  # 1 epoch x 2
    assert nn["nnunet_budget"]["plan_seconds"] > 0 and 0 <= nn["nnunet_budget"]["generator_seconds"] < 1  # none
    child = nn["nnunet_budget"]["subprocess_peak_memory_mb"]  # nnU-Net's own process (torch + its trainer)
    assert child > 200 and nn["peak_memory_mb"] >= child  # the record's peak is the run's, nnU-Net's included
    assert len({p.get("volume_id", p["case_id"]) for p in nn["per_case"]}) == 3  # 3 test volumes (2D: their slices)
    assert all(0.0 <= d <= 1.0 for p in nn["per_case"] for d in p["dice"].values())  # per class
    config = "2d" if dims == 2 else "3d_fullres"
    fold = (out / "runs" / "nnunet_n2_s0" / "nnunet" / "results" / "Dataset501_segsynth"
            / f"nnUNetTrainerSegsynthBudget__nnUNetPlans__{config}" / "fold_0")
    assert (fold / "checkpoint_final.pth").exists()
    assert json.loads((fold.parent / "plans.json").read_text())["configurations"][config]["batch_size"] == 3


@needs_nnunet
@pytest.mark.slow
def test_killed_nnunet_run_resumes_from_its_latest_checkpoint(tmp_path):
    """A sweep killed (SIGKILL) while nnU-Net trains: run again, the run continues from nnU-Net's latest
    checkpoint (whole, thanks to the trainer's write-then-rename) instead of starting over, and finishes."""
    data = write_png_dataset(tmp_path / "blobs", n=6)
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", str(data), "--methods", "nnunet", "--n", "2", "--n-val", "2", "--seeds", "1",
            "--steps", "4", "--batch-size", "2", "--size", "32", "--threads", "1", "--no-fidelity",
            "--method-opt", "nnunet.budget=epochs", "--method-opt", "nnunet.epochs=6",
            "--method-opt", "nnunet.iterations_per_epoch=2", "--out", str(out)]
    fold = (out / "runs" / "nnunet_n2_s0" / "nnunet" / "results" / "Dataset501_segsynth"
            / "nnUNetTrainerSegsynthBudget__nnUNetPlans__2d" / "fold_0")
    code = "import sys; from segsynth.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600
        while not (fold / "checkpoint_latest.pth").exists():
            assert proc.poll() is None, "the sweep ended before nnU-Net wrote a checkpoint to resume from"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and nnU-Net's training subprocess
        proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    assert not (out / "results.jsonl").exists() or "nnunet" not in (out / "results.jsonl").read_text()
    killed_at = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"]
    assert 1 <= killed_at < 6

    assert main(argv) == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == "nnunet" and record["status"] == "ok", record.get("error")
    assert record["nnunet_budget"]["epochs_run"] == 6
    earlier = record["nnunet_budget"]["earlier_training_seconds"]  # the killed process's epochs, from nnU-Net's log
    assert earlier > 0 and record["train_seconds"] > earlier and record["seconds"] >= record["train_seconds"]
    assert record["nnunet_budget"]["earlier_plan_seconds"] > 0  # the killed process planned; this one did not
    assert record["nnunet_budget"]["plan_seconds"] < record["nnunet_budget"]["earlier_plan_seconds"]
    assert record["nnunet_budget"]["subprocess_peak_memory_mb"] > 200  # nnU-Net's trainer, torch loaded
    train_log = (out / "runs" / "nnunet_n2_s0" / "nnunet" / "logs" / "train.log").read_text()
    commands = [line for line in train_log.splitlines() if line.startswith("$ ")]
    assert commands[-1].endswith(" continue"), commands  # resumed, not started again
    assert (fold / "checkpoint_final.pth").exists() and not (fold / "checkpoint_latest.pth").exists()
