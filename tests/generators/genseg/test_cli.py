"""GenSeg commands end to end on a tiny dataset."""

import json

import numpy as np

from segsynth.cli import main
from segsynth.data.dataset import load_dataset
from segsynth.generators.genseg import (
    GenSegGenerator,
)
from tests.conftest import write_png_dataset
from tests.generators.genseg.helpers import TINY


def test_cli_synthesize_from_masks_and_augmented_dataset(tmp_path, capsys):
    data = write_png_dataset(tmp_path / "blobs", n=4)
    from segsynth.data.preprocess import PreprocessSpec

    loaded = load_dataset(data, PreprocessSpec(size=32), progress=False)
    gen = GenSegGenerator(**TINY)
    gen.build_for(loaded.cases, seed=0, info=loaded.info)
    gen.save(tmp_path / "model" / "generator")

    out = tmp_path / "syn_aug"
    assert main(["synthesize", "--model", str(tmp_path / "model"), "--augment-from", str(data), "--n", "3",
                 "--out", str(out), "--device", "cpu", "-q"]) == 0
    ds = load_dataset(out, PreprocessSpec(size=None), progress=False)
    assert len(ds.cases) == 3 and ds.info.labels == loaded.info.labels
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["synthetic"]["method"] == "genseg" and doc["synthetic"]["augmented"]
    prov = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    assert {"seed", "source_mask", "model", "augment"} <= set(prov[0]["meta"])

    out2 = tmp_path / "syn_masks"
    assert main(["synthesize", "--model", str(tmp_path / "model" / "generator"), "--masks", str(data / "masks"),
                 "--out", str(out2), "--device", "cpu", "-q"]) == 0
    ds2 = load_dataset(out2, PreprocessSpec(size=None), progress=False)
    assert len(ds2.cases) == 4
    first = [json.loads(line) for line in (out2 / "provenance.jsonl").read_text().splitlines()][0]
    src = np.asarray(__import__("PIL.Image").Image.open(data / "masks" / f"{first['meta']['source_mask']}.png")) > 0
    assert np.array_equal(ds2.cases[0].mask > 0, src)
    capsys.readouterr()
    assert main(["synthesize", "--model", str(tmp_path), "--masks", str(data / "masks"), "--out",
                 str(tmp_path / "x"), "-q"]) == 2
    assert "genseg.json" in capsys.readouterr().err


def test_cli_genseg_trains_saves_and_evaluates(tmp_path, capsys):
    data = write_png_dataset(tmp_path / "blobs", n=6)
    out = tmp_path / "out"
    args = ["genseg", "--data", str(data), "--out", str(out), "--n", "2", "--n-val", "1", "--n-test", "2",
            "--size", "32", "--steps", "2", "--val-every", "2", "--batch-size", "2", "--unet-features",
            "4,4,8,8,16,4", "--pretrain-steps", "1", "--gen-features", "4", "--method-opt",
            "genseg.disc_features=4", "--method-opt", "genseg.derive_steps=1", "--arch-every", "1",
            "--device", "cpu", "-q"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "genseg" and 0 <= summary["test_dice"] <= 1 and summary["n_test"] == 2
    assert summary["search"]["genotype"] == summary["architecture"]["genotype"]
    # the fields segsynth train's summary.json has too (segsynth.segment.run_summary)
    assert summary["steps"] == 2 and summary["best_step"] in (0, 2) and summary["precision"] == "fp32"
    assert summary["device"] == "cpu" and summary["threads"] >= 1 and "test_hd95" in summary
    assert (out / "segmenter" / "model.safetensors").exists()
    assert not GenSegGenerator.load(out / "generator").net.searchable
    assert GenSegGenerator.load(out / "work" / "generator_search").net.searchable
    assert "generator" in capsys.readouterr().out
