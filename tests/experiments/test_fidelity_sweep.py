"""Label fidelity in a sweep: generator runs get the field, augment is the reference, the report shows both."""

from __future__ import annotations

import pytest

from segsynth.experiments.fidelity_report import fidelity_section
from segsynth.experiments.sweep import run_sweep
from tests.conftest import write_png_dataset
from tests.experiments.test_sweep import _cfg


@pytest.mark.slow
def test_sweep_fidelity_field_reference_reuse_and_report(tmp_path, monkeypatch, capsys):
    import segsynth.evaluate.fidelity as fidelity

    data = write_png_dataset(tmp_path / "d", n=10)
    out = tmp_path / "sweep"
    trained = []
    real_train = fidelity.reference_segmenter

    def spy(ctx, directory, **kw):
        if directory is not None and not (directory / "model" / "model.json").exists():
            trained.append(directory)
        return real_train(ctx, directory, **kw)

    monkeypatch.setattr(fidelity, "reference_segmenter", spy)
    cfg = _cfg(data, out, methods=["none", "augment", "domain_rand"], n_values=[1], seeds=[0], fidelity_pairs=12)
    records = run_sweep(cfg)
    by = {r["method"]: r for r in records}
    assert "label_fidelity" not in by["none"] and "label_fidelity" not in by["augment"]
    f = by["domain_rand"]["label_fidelity"]
    assert f["n_synthetic"] == 12 and f["n_real"] == 2 and len(f["scores"]) == 12
    assert 0 <= f["synthetic_mean"] <= 1 and f["reference"] == "augment"
    assert trained == []  # the sweep's own augment run was the reference
    assert list((out / "runs" / "_fidelity_reference").glob("*/model/model.json"))
    assert (out / "fidelity" / "domain_rand_n1_s0.png").exists()
    html = (out / "report.html").read_text()
    assert "Label fidelity of the synthetic pairs" in html and "Least faithful synthetic pairs" in html
    assert "Verdict" in html and "domain_rand vs augment: one split: " in html
    from segsynth.experiments.sweep import print_summary

    print_summary(records, out)
    assert "Verdict (the split is the unit" in capsys.readouterr().out
    # without augment in the sweep, the reference is trained once per (N, seed), then reused
    out2 = tmp_path / "sweep2"
    rec, = run_sweep(_cfg(data, out2, methods=["domain_rand"], n_values=[1], seeds=[0], fidelity_pairs=4,
                          method_options={"domain_rand": {"min_fidelity": 0.0}}))
    assert len(trained) == 1
    # min_fidelity's redraws are counted in the record (threshold 0: every draw reaches it at once)
    st = rec["source_statistics"]["min_fidelity"]
    assert st["threshold"] == 0.0 and st["samples"] >= 4 and st["reached_fraction"] == 1.0
    assert st["draws_per_sample"] == 1.0
    assert "source_statistics" not in by["augment"]
    # a sweep without generators keeps its augment runs as references: extended by one, it trains none
    out3 = tmp_path / "sweep3"
    run_sweep(_cfg(data, out3, methods=["augment"], n_values=[1], seeds=[0], fidelity_pairs=4))
    assert list((out3 / "runs" / "_fidelity_reference").glob("*/model/model.json"))
    run_sweep(_cfg(data, out3, methods=["augment", "domain_rand"], n_values=[1], seeds=[0], fidelity_pairs=4))
    assert len(trained) == 1


def test_cli_fidelity_flags():
    from segsynth.cli import build_parser

    base = ["sweep", "--data", "d", "--out", "o"]
    assert build_parser().parse_args(base).fidelity is True
    a = build_parser().parse_args([*base, "--no-fidelity", "--fidelity-pairs", "7"])
    assert a.fidelity is False and a.fidelity_pairs == 7


def test_fidelity_section_is_empty_without_fields(tmp_path):
    assert fidelity_section([{"method": "none", "status": "ok"}], tmp_path) == ""


def test_fidelity_section_shows_the_worst_block_edges(tmp_path):
    def rec(seed, syn8):
        return {"method": "spade", "status": "ok", "dataset": "d", "n_train": 4, "seed": seed,
                "label_fidelity": {"synthetic_mean": 0.8, "synthetic_median": 0.8, "real_val_mean": 0.9,
                                   "ratio": 0.89, "n_synthetic": 10, "n_real": 2,
                                   "grid_energy": {"periods": [2, 4, 8], "real": [1.0, 1.0, 1.0],
                                                   "synthetic": [1.1, 1.0, syn8]}}}

    html = fidelity_section([rec(0, 1.5), rec(1, 1.3)], tmp_path, img_tag=lambda p, alt: "")
    assert "block edges" in html and "1.40× at 8 px" in html
    inside = rec(0, 1.0)
    inside["label_fidelity"]["grid_energy"]["synthetic"][0] = 0.6  # steps inside 2-pixel cells: below 1
    assert "0.60× at 2 px" in fidelity_section([inside], tmp_path, img_tag=lambda p, alt: "")
    no_grid = rec(0, 1.0)
    del no_grid["label_fidelity"]["grid_energy"]
    assert "<td>—</td>" in fidelity_section([no_grid], tmp_path, img_tag=lambda p, alt: "")
