"""benchmarks/nnunet_peer_tables.py and method_evidence.py --readme: the docs' tables come from the sweeps'
records, in the orientation the docs write them (records are made up; no training)."""

import json

import pytest


def _record(method, seed, dice, test_set="in-domain", seconds=100.0, peak=1000.0, sub_peak=None, cpu="Xeon"):
    cases = [{"case_id": f"c{i}", "dice_mean": dice + 0.01 * i, "hd95_mean": 3.0} for i in range(4)]
    r = {"dataset": "Toy", "method": method, "n_train": 2, "seed": seed, "segmenter": "unet", "status": "ok",
         "test_set": test_set, "per_case": cases, "dice_mean": sum(c["dice_mean"] for c in cases) / 4,
         "hd95_mean": 3.0, "seconds": seconds, "peak_memory_mb": peak, "device": "cpu", "cpu": cpu}
    if sub_peak is not None:
        r["nnunet_budget"] = {"subprocess_peak_memory_mb": sub_peak}
    return r


def _write(folder, budget, records):
    (folder / budget).mkdir(parents=True, exist_ok=True)
    (folder / budget / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture()
def sweeps(tmp_path):
    folder = tmp_path / "nnunet_peer_toy"
    images = []
    for seed in range(3):  # nnunet beats augment by 5 points on every split; separate_aug 1 point under augment
        images += [_record("augment", seed, 0.70 + 0.02 * seed),
                   _record("separate_aug", seed, 0.69 + 0.02 * seed),
                   _record("nnunet", seed, 0.75 + 0.02 * seed, seconds=3000, sub_peak=1536.0),
                   _record("augment", seed, 0.50, test_set="Shenzhen chest X-ray lungs"),
                   _record("nnunet", seed, 0.40, test_set="Shenzhen chest X-ray lungs", sub_peak=1536.0)]
    images.append(_record("nnunet+separate_aug", 0, 0.77, sub_peak=1600.0))  # one split so far
    _write(folder, "images", images)
    _write(folder, "seconds", [_record("augment", 0, 0.70), _record("nnunet", 0, 0.60, sub_peak=1500.0, cpu="EPYC")])
    return tmp_path


def test_runs_table_shows_every_split_asked_for_and_nnunet_subprocess_peak(sweeps):
    tables = pytest.importorskip("benchmarks.nnunet_peer_tables")
    records = tables.load(sweeps / "nnunet_peer_toy")
    lines = tables.runs_table(records, [0, 1, 2, 3])
    row = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:]}
    assert row["`augment`"].split(" | ")[1] == "0.715, 0.735, 0.755, –"
    assert row["`nnunet`"].endswith("| 3000-3000 | 1.50 GB |")  # the subprocesses' peak, not the waiting parent's
    assert row["`nnunet+separate_aug`"].split(" | ")[1] == "0.785, –, –, –"
    assert "`nnunet` in `augment`'s wall clock" in row and "`separate_aug` in" not in " ".join(row)
    assert not any("Shenzhen" in ln for ln in lines)  # the per-run table is in domain only


def test_verdict_table_orients_each_comparison_as_the_docs_do(sweeps):
    tables = pytest.importorskip("benchmarks.nnunet_peer_tables")
    lines = tables.verdict_table(tables.load(sweeps / "nnunet_peer_toy"), [0, 1, 2])
    nn_vs_aug = [ln for ln in lines if ln.startswith("| `nnunet` vs `augment` (matched images)")]
    assert len(nn_vs_aug) == 1 and "| in domain | **helped** | +5.0 [+5.0, +5.0] | +5.0, +5.0, +5.0 |" in nn_vs_aug[0]
    shenzhen = lines[lines.index(nn_vs_aug[0]) + 1]  # the same comparison's external test set, on the next row
    assert shenzhen.startswith("|  | Shenzhen | **hurt** | −10.0")
    assert any(ln.startswith("| `separate_aug` vs `augment` (these splits) | in domain | **hurt** | −1.0")
               for ln in lines)
    # one split of the combination: no interval, no verdict word beyond "one split"
    combo = next(ln for ln in lines if ln.startswith("| `nnunet+separate_aug` vs `nnunet` (matched images)"))
    assert "| one split | +2.0 | +2.0 | – | – |" in combo
    # a split outside those asked for is left out
    one = tables.verdict_table(tables.load(sweeps / "nnunet_peer_toy"), [0])
    assert all("**helped**" not in ln for ln in one)


def test_machines_names_the_runs_of_a_split_computed_elsewhere(sweeps):
    tables = pytest.importorskip("benchmarks.nnunet_peer_tables")
    got = tables.machines(tables.load(sweeps / "nnunet_peer_toy"), [0, 1])
    assert got == "split 0: Xeon; split 0's `nnunet` (seconds): EPYC; split 1: Xeon"


def test_tables_refuse_a_task_with_no_runs(tmp_path):
    tables = pytest.importorskip("benchmarks.nnunet_peer_tables")
    with pytest.raises(SystemExit, match="no finished runs"):
        tables.main(["toy", "--results", str(tmp_path)])


def test_readme_splice_replaces_only_the_evidence_table():
    evidence = pytest.importorskip("benchmarks.method_evidence")
    page = "# B\n\n## Method-level evidence: read\n\ntext\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter\n\n| x |\n"
    got = evidence.splice_table(page, ["| a | b |", "|---|---|", "| 3 | 4 |", "| 5 | 6 |"])
    assert got == "# B\n\n## Method-level evidence: read\n\ntext\n\n| a | b |\n|---|---|\n| 3 | 4 |\n| 5 | 6 |\n\n" \
                  "after\n\n| x |\n"
    with pytest.raises(SystemExit, match="no table after"):
        evidence.splice_table("# B\n\nno heading\n", ["| a |"])


def test_evidence_row_keeps_its_cells_when_the_case_level_p_is_missing():
    evidence = pytest.importorskip("benchmarks.method_evidence")
    row = {"task": "toy", "method": "a", "baseline": "b", "note": "n", "test_set": "in-domain", "word": "hurt",
           "mean": -0.05, "ci_low": -0.08, "ci_high": -0.02, "split_diffs": [-0.04, -0.06], "p_worse": 0.9,
           "splits_needed": 7, "case_wilcoxon_p": float("nan")}
    assert evidence.evidence_row(row) == ("| toy | a vs b (n) | in-domain | **hurt** | −5.0 [−8.0, −2.0] | "
                                          "−4.0, −6.0 | 90 % | 7 | n/a |")
    assert evidence.evidence_row({**row, "case_wilcoxon_p": 0.0123}).endswith("| 7 | 0.01 |")


@pytest.mark.parametrize(("argv", "partial"), [(["hippo3d"], False), (["hippo3d", "--splits", "8"], False),
                                               (["hippo3d", "--splits", "1", "--first-split", "3"], True),
                                               (["hippo3d", "--splits", "3"], True),
                                               (["hippo3d", "--methods", "nnunet"], True)])
def test_a_call_for_some_splits_leaves_the_committed_summary_alone(argv, partial):
    peer = pytest.importorskip("benchmarks.nnunet_peer")
    assert peer.partial_call(peer.build_parser().parse_args(argv)) is partial


def test_methods_runs_only_the_named_runs_of_each_sweep_and_names_unknown_ones(tmp_path):
    peer = pytest.importorskip("benchmarks.nnunet_peer")
    parse = peer.build_parser().parse_args
    cfgs = peer.sweep_configs(parse(["hippo3d", "--data", str(tmp_path), "--methods", "nnunet+separate_aug"]),
                              tmp_path / "out")
    assert {b: c.methods for b, c in cfgs.items()} == {"images": ["nnunet+separate_aug"],
                                                       "seconds": ["nnunet+separate_aug"]}
    only_images = peer.sweep_configs(parse(["hippo3d", "--data", str(tmp_path), "--methods", "separate_aug"]),
                                     tmp_path / "out")
    assert {b: c.methods for b, c in only_images.items()} == {"images": ["separate_aug"]}
    with pytest.raises(SystemExit, match="unknown nnunet_aug"):
        peer.sweep_configs(parse(["hippo3d", "--data", str(tmp_path), "--methods", "nnunet,nnunet_aug"]),
                           tmp_path / "out")


def test_wall_clock_sweep_is_seeded_with_each_finished_augment_record_once(tmp_path):
    peer = pytest.importorskip("benchmarks.nnunet_peer")
    _write(tmp_path, "images", [_record("augment", 0, 0.7), _record("augment", 1, 0.8),
                                {**_record("augment", 2, 0.0), "status": "failed"}, _record("nnunet", 0, 0.75)])
    for _ in range(2):  # a second call (another --methods call of the same split) copies nothing again
        peer.seed_wall_clock_sweep(tmp_path / "images", tmp_path / "seconds")
    seeded = [json.loads(line) for line in (tmp_path / "seconds" / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["seed"]) for r in seeded] == [("augment", 0), ("augment", 1)]
