import json
from pathlib import Path

from segsynth.data.preprocess import PreprocessSpec
from segsynth.experiments.sweep import SweepConfig, first_n, run_sweep
from segsynth.generators import METHODS
from segsynth.generators.base import Method
from segsynth.segment.train import TrainConfig
from segsynth.utils.files import read_jsonl
from tests.conftest import make_blob_case, write_png_dataset


def _cfg(data: Path, out: Path, **kw) -> SweepConfig:
    base = dict(data=data, out=out, methods=["none", "augment"], n_values=[1, 2], seeds=[0, 1], n_val=2, n_test=4,
                segmenter_kwargs={"features": (4, 4, 8, 8, 16, 4)}, spec=PreprocessSpec(size=32),
                train=TrainConfig(steps=4, batch_size=2, val_every=2, progress=False), device="cpu",
                sample_predictions=1)
    base.update(kw)
    return SweepConfig(**base)


def test_sweep_records_report_and_resume(tmp_path):
    data = write_png_dataset(tmp_path / "d", n=10)
    out = tmp_path / "sweep"
    records = run_sweep(_cfg(data, out))
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    r = records[0]
    assert {"dice_mean", "hd95_mean", "per_case", "val_dice", "seconds", "peak_memory_mb"} <= set(r)
    assert len(r["per_case"]) == 4 and 0.0 <= r["dice_mean"] <= 1.0
    html = (out / "report.html").read_text()
    assert "none" in html and "augment" in html and "data:image/png;base64" in html
    assert list((out / "samples").glob("*.png"))
    # a rerun repeats nothing: same records, no new lines
    before = (out / "results.jsonl").read_text()
    run_sweep(_cfg(data, out))
    assert (out / "results.jsonl").read_text() == before
    # a larger sweep only adds the missing runs
    run_sweep(_cfg(data, out, n_values=[1, 2, 3]))
    assert len(read_jsonl(out / "results.jsonl")) == 12


def test_external_test_set_is_evaluated_separately(tmp_path):
    data = write_png_dataset(tmp_path / "a", n=8)
    other = write_png_dataset(tmp_path / "b", n=5, seed=7, contrast=0.5, prefix="ext")
    records = run_sweep(_cfg(data, tmp_path / "s", methods=["none"], n_values=[1], seeds=[0], test_data=other))
    assert sorted(r["test_set"] for r in records) == ["b", "in-domain"]
    ext = next(r for r in records if r["test_set"] == "b")
    assert ext["n_test"] == 5


def test_external_test_cases_with_training_ids_are_left_out_of_training(tmp_path, caplog):
    data = write_png_dataset(tmp_path / "a", n=10)
    copy = write_png_dataset(tmp_path / "b", n=3, contrast=0.5)  # case000..case002: the same scans, re-styled
    with caplog.at_level("WARNING"):
        records = run_sweep(_cfg(data, tmp_path / "s", methods=["none"], n_values=[1], seeds=[0, 1],
                                 test_data=copy))
    assert "share their id with training data" in caplog.text
    shared = {"case000", "case001", "case002"}
    for r in records:
        if r["test_set"] == "in-domain":
            assert not shared & {c["case_id"] for c in r["per_case"]}
    # training + validation cases are never the external test scans
    assert all(r["train_ids"] and not shared & set(r["train_ids"] + r["val_ids"]) for r in records)


class _Broken(Method):
    name = "broken"

    def run(self, ctx):
        raise RuntimeError("generator exploded")


def test_failed_method_is_recorded_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "broken", f"{__name__}:_Broken")
    data = write_png_dataset(tmp_path / "a", n=8)
    records = run_sweep(_cfg(data, tmp_path / "s", methods=["none", "broken"], n_values=[1], seeds=[0]))
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and "generator exploded" in failed[0]["error"]
    assert "broken" in (tmp_path / "s" / "report.html").read_text()
    json.dumps(records)


def test_first_n_keeps_volumes_whole():
    cases = []
    for v in range(3):
        for s in range(2):
            c = make_blob_case(f"v{v}_s{s}", (8, 8))
            c.meta["volume_id"] = f"v{v}"
            cases.append(c)
    assert [c.case_id for c in first_n(cases, 2)] == ["v0_s0", "v0_s1", "v1_s0", "v1_s1"]
