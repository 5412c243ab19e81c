"""``segsynth report``: sweeps re-rendered without training, several folders merged by run key."""

from __future__ import annotations

import json

import pytest

from segsynth.cli import main
from segsynth.errors import DataError
from segsynth.experiments.merge import merge_sweeps
from tests.experiments.test_verdict import _records


def _write(folder, records, torn: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn, encoding="utf-8")
    return folder


def _verdict_lines(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if " vs " in ln and ": " in ln]


def test_two_folders_merge_into_the_verdicts_of_one_sweep(tmp_path, capsys):
    recs = _records({"none": -0.05, "augment": 0.0, "genseg": 0.02}, seeds=(0, 1, 2, 3),
                    split_shift={1: {"genseg": 0.03}, 3: {"genseg": -0.02}})
    recs.append({**recs[0], "method": "genseg", "seed": 4, "status": "failed", "error": "RuntimeError: boom"})
    one = _write(tmp_path / "one", recs)
    a = _write(tmp_path / "machine_a", [r for r in recs if r["seed"] in (0, 1)])
    # machine b also holds a copy of one of a's runs (identical: kept once) and a torn last line (a killed sweep)
    b = _write(tmp_path / "machine_b", [r for r in recs if r["seed"] in (2, 3, 4)] + [recs[0]], torn='{"method": "ge')
    assert main(["report", str(one), "--out", str(tmp_path / "r1")]) == 0
    single = capsys.readouterr().out
    assert main(["report", str(a), str(b / "results.jsonl"), "--out", str(tmp_path / "r2")]) == 0
    merged = capsys.readouterr().out
    assert _verdict_lines(single) == _verdict_lines(merged) and len(_verdict_lines(single)) == 3
    assert "genseg vs augment: " in merged and "over 4 splits" in merged  # the failed seed 4 has no pair
    assert single.split("Verdict")[0].splitlines()[:6] == merged.split("Verdict")[0].splitlines()[:6]  # the table
    for r in ("r1", "r2"):
        assert (tmp_path / r / "report.html").is_file() and (tmp_path / r / "verdict_splits.png").is_file()
    rows = [json.loads(x) for x in (tmp_path / "r2" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(recs)
    # the merged folder is itself a sweep folder: reading it again gives the same verdicts
    assert main(["report", str(tmp_path / "r2"), "--out", str(tmp_path / "r3")]) == 0
    assert _verdict_lines(capsys.readouterr().out) == _verdict_lines(single)


def test_a_finished_run_replaces_a_failed_one():
    ok = _records({"augment": 0.0}, seeds=(0,))[0]
    failed = {**ok, "status": "failed", "error": "killed"}
    merged = merge_sweeps_from([failed], [ok])
    assert len(merged) == 1 and merged[0]["status"] == "ok"
    assert merge_sweeps_from([ok], [failed])[0]["status"] == "ok"


def merge_sweeps_from(*record_lists):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return merge_sweeps([_write(Path(d) / f"s{i}", recs) for i, recs in enumerate(record_lists)])


def test_two_different_records_of_one_run_are_an_error_naming_both(tmp_path, capsys):
    recs = _records({"augment": 0.0, "genseg": 0.02}, seeds=(0, 1))
    a = _write(tmp_path / "a", recs)
    other = [dict(r) for r in recs]
    other[1] = {**other[1], "dice_mean": 0.5}
    b = _write(tmp_path / "b", other)
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "disagree" in err
    assert f"{a / 'results.jsonl'}:2" in err and f"{b / 'results.jsonl'}:2" in err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("case", ["missing", "no_results", "empty", "corrupt_line", "not_a_record", "wrong_file"])
def test_bad_sweep_folders_are_one_line_and_exit_2(tmp_path, capsys, case):
    target = tmp_path / "sweep"
    if case == "no_results":
        target.mkdir()
    elif case == "empty":
        _write(target, [])
    elif case == "corrupt_line":
        target.mkdir()
        (target / "results.jsonl").write_text('{"method": "a", "n_train": 1}\nnot json\n{"method": "a", "n_train": 2}\n')
    elif case == "not_a_record":
        target.mkdir()
        (target / "results.jsonl").write_text('[1, 2]\n{"method": "a", "n_train": 1}\n')
    elif case == "wrong_file":
        target = tmp_path / "results.csv"
        target.write_text("a,b\n")
    assert main(["report", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target.name) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError):
        merge_sweeps([target])
