"""A sweep with ``--target-unlabelled`` (issue 41): the target methods run, records name the target folder, the
report shows a montage per target method, and a target method without the option is refused before training."""

from __future__ import annotations

import json

from segsynth.cli import main
from tests.conftest import write_png_dataset
from tests.test_cli_bad_input import files_under, run_cli

TINY = ["--size", "32", "--steps", "2", "--batch-size", "2", "--val-every", "2", "--unet-features", "4,4,8,8,16,4",
        "--device", "cpu", "-q", "--n", "2", "--seeds", "1", "--n-val", "1", "--n-test", "2", "--no-fidelity"]
SPADE = ["spade_channels=[8,16]", "z_dim=4", "spade_hidden=8", "disc_channels=8", "spade_steps=1",
         "spade_batch_size=4", "classifier_steps=1", "n_synthetic=4"]


def _sites(tmp_path):
    src = write_png_dataset(tmp_path / "source", n=5, seed=0, prefix="src")
    site_b = write_png_dataset(tmp_path / "site_b", n=8, seed=1, contrast=0.4, prefix="b")
    assert main(["split-folder", str(site_b), "--seed", "0", "--out", str(tmp_path / "b_unl"),
                 str(tmp_path / "b_test")]) == 0
    return src, tmp_path / "b_unl", tmp_path / "b_test"


def test_a_sweep_with_target_images_runs_the_target_methods_and_shows_their_montages(tmp_path, capsys):
    src, unl, test = _sites(tmp_path)
    methods = "augment,spade_target,spade_target+fixmatch"
    opts = [x for o in SPADE for x in ("--method-opt", f"spade_target.{o}")]
    opts += [x for o in SPADE for x in ("--method-opt", f"spade_target+fixmatch.{o}")]
    code = main(["sweep", "--data", str(src), "--test-data", str(test), "--target-unlabelled", str(unl),
                 "--methods", methods, "--out", str(tmp_path / "out"), *TINY, *opts])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"ok"}
    assert {r["test_set"] for r in records} == {"in-domain", "site_b (part B)"}
    assert all(r["target_data"] == str(unl) and r["n_target"] == 4 for r in records)
    samples = tmp_path / "out" / "samples"
    montages = sorted(p.name for p in samples.glob("target_montage_*.png"))
    assert montages == ["target_montage_spade_target+fixmatch_n2.png", "target_montage_spade_target_n2.png"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "target_montage_spade_target_n2" in report
    assert report.index("target_montage_") < report.index("in-domain_augment")  # montages first


def test_a_target_method_without_target_images_is_refused_before_training(tmp_path, capsys):
    src, _, test = _sites(tmp_path)
    before = files_under(tmp_path)
    code, err, _ = run_cli(["sweep", "--data", src, "--test-data", test, "--methods", "augment,fixmatch_target",
                            "--out", tmp_path / "out", *TINY], capsys)
    assert code == 2 and len(err) == 1 and "fixmatch_target" in err[0] and "--target-unlabelled DIR" in err[0]
    assert files_under(tmp_path) == before
    code, err, _ = run_cli(["train", "--data", src, "--method", "spade_target", "--out", tmp_path / "t",
                            *TINY[:12], "--n", "2", "--n-val", "1"], capsys)
    assert code == 2 and len(err) == 1 and "--target-unlabelled DIR" in err[0]
    assert not (tmp_path / "t").exists()


def test_train_takes_target_images(tmp_path, capsys):
    src, unl, _ = _sites(tmp_path)
    code = main(["train", "--data", str(src), "--method", "fixmatch_target", "--target-unlabelled", str(unl),
                 "--method-opt", "fixmatch_target.threshold=0.0", "--out", str(tmp_path / "t"), *TINY[:12],
                 "--n", "2", "--n-val", "1"])
    assert code == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["method"] == "fixmatch_target"
