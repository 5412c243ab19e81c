"""summary.json of a training run: the fields segsynth train and segsynth genseg share."""

import json

import numpy as np
import torch

from segsynth.data.case import Case
from segsynth.data.splits import Split
from segsynth.segment.run_summary import model_record, run_summary, score_test_cases
from segsynth.segment.train import TrainResult


class _Threshold(torch.nn.Module):
    """A 'segmenter' that calls a pixel foreground when its intensity is above 0.5 (logits for 2 classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x[:, :1] - 0.5) * 20
        return torch.cat([-fg, fg], 1)


LABELS = {0: "background", 1: "fg"}
CPU = torch.device("cpu")


def _case(i: int, shift: int = 0) -> Case:
    mask = np.zeros((16, 16), np.int64)
    mask[4:12, 4 + shift:12 + shift] = 1
    return Case(f"c{i}", (mask[None] * 0.9 + 0.05).astype(np.float32), mask, {})


def test_score_test_cases_writes_metrics_and_run_summary_reads_them(tmp_path):
    split = Split(train=[_case(0)], val=[_case(1)], test=[_case(2), _case(3, shift=2)])
    test = score_test_cases(_Threshold(), split, LABELS, tmp_path / "test_metrics", None, CPU)
    written = json.loads((tmp_path / "test_metrics" / "metrics.json").read_text())
    assert written["summary"] == test and test["n_cases"] == 2 and test["dice_mean"] > 0.99
    result = TrainResult(model=_Threshold(), best_val_dice=0.7, best_step=40, seconds=12.5, peak_memory_mb=300.0,
                         steps=50, precision="fp32")
    s = run_summary("augment", 1, 3, result, split, CPU, {"x": 1}, test, extra_field="kept")
    assert (s["method"], s["n_train"], s["seed"], s["val_dice"], s["best_step"], s["steps"]) == \
        ("augment", 1, 3, 0.7, 40, 50)
    assert s["train_seconds"] == 12.5 and s["peak_memory_mb"] == 300.0 and s["precision"] == "fp32"
    assert s["device"] == "cpu" and s["threads"] >= 1 and s["options"] == {"x": 1} and s["extra_field"] == "kept"
    assert s["train_cases"] == ["c0"] and s["val_cases"] == ["c1"]
    assert s["test_dice"] == test["dice_mean"] and s["test_hd95"] == test["hd95_mean"] and s["n_test"] == 2
    json.dumps(s)  # it goes to a JSON file as it is
    record = model_record("augment", 1, 3, result, split, CPU)
    assert record["train_cases"] == ["c0"] and record["trained_on"]["device"] == "cpu"


def test_a_split_without_test_cases_writes_no_metrics_and_no_test_fields(tmp_path):
    split = Split(train=[_case(0)], val=[_case(1)], test=[])
    assert score_test_cases(_Threshold(), split, LABELS, tmp_path / "m", None, CPU) == {}
    assert not (tmp_path / "m").exists()
    result = TrainResult(model=_Threshold(), best_val_dice=0.5, best_step=1)
    s = run_summary("none", 1, 0, result, split, CPU, {}, {})
    assert "test_dice" not in s and "n_test" not in s
