"""The demo on a tiny configuration: sweep with GenSeg, montage, label fidelity, verdict, no progress bars."""

import json

import pytest

from segsynth.experiments.demo import GENSEG_DEMO, DemoConfig, run_demo
from tests.data.data_builders import make_msd

TINY_GENSEG = {**GENSEG_DEMO, "features": 4, "max_features": 8, "disc_features": 4, "pretrain_steps": 2,
               "gen_batch_size": 2, "arch_batch_size": 2, "arch_every": 1, "arch_every_max": 2}


@pytest.mark.slow
def test_demo_runs_the_main_job_on_a_tiny_config(tmp_path, capsys):
    out = tmp_path / "demo"
    data = make_msd(tmp_path / "msd", n=4, shape=(32, 32, 6))  # 3D volumes, sliced like the shipped sample
    cfg = DemoConfig(out=out, data=data, device="cpu", steps=2, batch_size=2, size=32, n_val=1, n_test=1, seeds=(0,),
                     genseg=TINY_GENSEG, segmenter_kwargs={"features": (4, 4, 8, 8, 16, 4)}, sample_predictions=0,
                     montage_pairs=2, fidelity_pairs=2)
    result = run_demo(cfg)
    printed = capsys.readouterr()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records if r["status"] == "ok"} == {"none", "augment", "genseg"}
    assert (out / "synthetic_vs_real.png").stat().st_size > 0
    assert "GenSeg: generated pairs beside real ones" in (out / "report.html").read_text()  # montage in the report
    fid = result["label_fidelity"]
    assert 0.0 <= fid["synthetic_mean"] <= 1.0 and fid["n_synthetic"] == 2
    # the verdict is computed: genseg against augment and none, augment against none
    assert len(result["verdict"]) == 3
    assert any(s.startswith("tiny_msd (in-domain), N=1: genseg vs augment: one split: ") for s in result["verdict"])
    assert json.loads((out / "demo.json").read_text())["verdict"] == result["verdict"]
    assert "label fidelity" in printed.out and "Verdict" in printed.out
    assert "\r" not in printed.err  # no progress bars when not on a terminal
