"""brainSPADE commands end to end on a tiny dataset."""

from __future__ import annotations

import json

from segsynth.cli import main
from segsynth.data.case import DatasetInfo
from segsynth.data.writer import DatasetWriter
from tests.conftest import make_blob_case

TINY_LABELS = ["--opt", "ae_channels=[16,16]", "--opt", "unet_channels=[16,32]", "--opt", "unet_attention=[false,true]",
               "--opt", "num_head_channels=16", "--opt", "disc_layers=2", "--opt", "ae_batch_size=2",
               "--opt", "latent_copies=1", "--opt", "num_train_timesteps=20", "--opt", "sampling_steps=2"]


TINY_IMAGES = ["--opt", "spade_channels=[8,16]", "--opt", "z_dim=4", "--opt", "spade_hidden=8",
               "--opt", "disc_channels=8", "--opt", "spade_batch_size=4", "--opt", "classifier_steps=1"]


def _dataset(root, prefix="sub-01", n=6, seed=0):
    info = DatasetInfo("blobs", {0: "background", 1: "a", 2: "b"}, "mri", 2, 1)
    with DatasetWriter(root, info, fmt="nifti") as w:
        for i in range(n):
            c = make_blob_case(f"{prefix}_ax{i:03d}", (32, 32), num_classes=3, seed=seed + i)
            c.meta = {}
            w.add(c)
    return root


def test_cli_train_sample_audit_export(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    common = ["--data", str(data), "--size", "32", "--seed", "0", "-q", "--volume-pattern", r"^(sub-\d+)_ax(\d+)$"]
    assert main(["brainspade-train-labels", *common, "--ae-steps", "1", "--ldm-steps", "1",
                 "--condition", "slice_position", *TINY_LABELS, "--out", str(tmp_path / "labels")]) == 0
    assert main(["brainspade-train-images", *common, "--spade-steps", "1", *TINY_IMAGES,
                 "--out", str(tmp_path / "images")]) == 0
    assert not (tmp_path / "labels" / "checkpoint").exists()  # removed once the model is saved
    assert not (tmp_path / "images" / "checkpoint").exists()
    info = json.loads((tmp_path / "images" / "dataset_info.json").read_text())
    assert info["info"]["labels"] == {"0": "background", "1": "a", "2": "b"} and len(info["train_ids"]) == 6

    sample = ["brainspade-sample", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
              "--n", "4", "--batch-size", "2", "-q", "--out", str(tmp_path / "syn")]
    assert main(sample) == 0
    assert main(sample) == 0  # complete already: nothing to do
    prov = [json.loads(x) for x in (tmp_path / "syn" / "provenance.jsonl").read_text().splitlines()]
    assert len(prov) == 4 and all("condition" in p["meta"] and "style_source" in p["meta"] for p in prov)

    assert main(["brainspade-sample", "--images", str(tmp_path / "images"), "--masks", str(data), "--n", "3", "-q",
                 "--out", str(tmp_path / "syn_masks")]) == 0

    assert main(["brainspade-audit", "--synthetic", str(tmp_path / "syn"), "--model", str(tmp_path / "images"),
                 "--data", str(data), "--size", "32", "-q", "--out", str(tmp_path / "audit")]) == 0
    audit = json.loads((tmp_path / "audit" / "privacy.json").read_text())
    assert audit["verdict"] in ("pass", "fail") and len(audit["rows"]) == 4
    assert "fid" in json.loads((tmp_path / "audit" / "quality.json").read_text())

    assert main(["export", "--data", str(tmp_path / "syn"), "--format", "nnunet", "--dataset-id", "9",
                 "--out", str(tmp_path / "raw")]) == 0
    exported = next((tmp_path / "raw").iterdir())
    assert json.loads((exported / "dataset.json").read_text())["numTraining"] == 4
    assert main(["export", "--data", str(tmp_path / "syn"), "--format", "msd", "--out", str(tmp_path / "msd")]) == 0
    assert (tmp_path / "msd" / "imagesTr").is_dir()
    out = capsys.readouterr().out
    assert "memorisation audit" in out


def test_cli_errors_are_exit_code_2(tmp_path, capsys):
    assert main(["brainspade-sample", "--images", str(tmp_path / "missing"), "--n", "2", "-q",
                 "--out", str(tmp_path / "o")]) == 2
    assert "dataset_info.json" in capsys.readouterr().err
