import json
from pathlib import Path

import pytest

from segsynth.data.preprocess import PreprocessSpec
from segsynth.errors import DataError
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
    assert r["device"] == "cpu" and r["threads"] >= 1 and r["cpu"]  # where the seconds were measured
    assert len(r["per_case"]) == 4 and 0.0 <= r["dice_mean"] <= 1.0
    html = (out / "report.html").read_text()
    assert "none" in html and "augment" in html and "data:image/png;base64" in html
    assert list((out / "samples").glob("*.png"))
    names = [p.name for p in (out / "samples").glob("*.png")]
    assert any("_n1_" in n for n in names) and any("_n2_" in n for n in names)  # the smallest N is shown too
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


class _BadInput(Method):
    name = "bad_input"

    def run(self, ctx):
        (ctx.workdir / "generator_pretrained").mkdir(parents=True)  # folders made before the input was read
        raise DataError("/nowhere/masks: mask folder not found")


def test_a_sweep_stopped_by_bad_input_leaves_no_empty_out_behind(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "bad_input", f"{__name__}:_BadInput")
    data = write_png_dataset(tmp_path / "a", n=8)
    out = tmp_path / "s"
    with pytest.raises(DataError, match="mask folder not found"):
        run_sweep(_cfg(data, out, methods=["bad_input"], n_values=[1], seeds=[0]))
    assert not out.exists()
    # an --out that held results before keeps them, and only the folders the stopped run left empty go
    run_sweep(_cfg(data, out, methods=["none"], n_values=[1], seeds=[0]))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(DataError):
        run_sweep(_cfg(data, out, methods=["none", "bad_input"], n_values=[1], seeds=[0]))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the stopped run's empty folders went


def test_first_n_keeps_volumes_whole():
    cases = []
    for v in range(3):
        for s in range(2):
            c = make_blob_case(f"v{v}_s{s}", (8, 8))
            c.meta["volume_id"] = f"v{v}"
            cases.append(c)
    assert [c.case_id for c in first_n(cases, 2)] == ["v0_s0", "v0_s1", "v1_s0", "v1_s1"]


TIMING = ("seconds", "train_seconds", "peak_memory_mb", "threads", "cpu", "gpu")  # and where they were measured


def cells(records) -> dict:
    """Records by (method, N, seed, test set), without the fields that measure time or memory."""
    return {(r["method"], r["n_train"], r["seed"], r["test_set"]): {k: v for k, v in r.items() if k not in TIMING}
            for r in records}


@pytest.mark.slow
def test_runs_do_not_depend_on_what_ran_before(tmp_path):
    """A run is a pure function of (data, method, options, N, seed): an interrupted-and-resumed sweep, one
    cell run alone and a reversed run order all give the records of the uninterrupted sweep."""
    import torch

    data = write_png_dataset(tmp_path / "d", n=10)
    kw = dict(n_values=[1], sample_predictions=0, report=False)
    full = cells(run_sweep(_cfg(data, tmp_path / "full", **kw)))
    assert len(full) == 4
    # reversed order ("killed" after seed 1), resumed later in a process whose global RNG has moved on
    run_sweep(_cfg(data, tmp_path / "resumed", methods=["augment", "none"], seeds=[1], **kw))
    torch.rand(1000)
    assert cells(run_sweep(_cfg(data, tmp_path / "resumed", methods=["augment", "none"], seeds=[1, 0], **kw))) == full
    # one cell alone
    alone = cells(run_sweep(_cfg(data, tmp_path / "alone", methods=["augment"], seeds=[1], **kw)))
    assert alone == {k: v for k, v in full.items() if k[0] == "augment" and k[2] == 1}


def test_executor_ray_without_ray_says_how_to_install(png_dataset, tmp_path, monkeypatch, capsys):
    import sys

    from segsynth.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    code = main(["sweep", "--data", str(png_dataset), "--out", str(tmp_path / "s"), "--executor", "ray", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'segsynth[ray]'" in err
    assert not (tmp_path / "s" / "results.jsonl").exists()


def test_resuming_on_another_thread_count_warns(tmp_path, caplog):
    import json
    import logging

    data = write_png_dataset(tmp_path / "d", n=10)
    out = tmp_path / "sweep"
    kw = dict(methods=["none"], n_values=[1], sample_predictions=0, report=False)
    run_sweep(_cfg(data, out, seeds=[0], **kw))
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    with caplog.at_level(logging.WARNING, logger="segsynth.experiments.sweep"):
        run_sweep(_cfg(data, out, seeds=[0, 1], **kw))  # same machine and threads: silent
    assert "computed elsewhere" not in caplog.text
    (out / "results.jsonl").write_text("".join(json.dumps({**r, "threads": 99}) + "\n" for r in lines))
    with caplog.at_level(logging.WARNING, logger="segsynth.experiments.sweep"):
        run_sweep(_cfg(data, out, seeds=[0, 1, 2], **kw))
    assert "results.jsonl holds runs computed elsewhere" in caplog.text and "99 threads" in caplog.text
