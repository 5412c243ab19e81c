"""What one training run cost and scored, in one file: ``summary.json`` of ``segsynth train`` and ``segsynth genseg``.

Both commands test the trained segmenter on the split's held-out cases (``test_metrics/``) and write the same
fields, so that a person or a script comparing runs reads one format: method, N, seed, validation Dice and its
step, seconds, peak memory, precision, where it ran, the options, the case ids of each part of the split, and
test Dice / HD95 over the test cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segsynth.data.splits import Split
from segsynth.segment.train import TrainResult


def score_test_cases(model: torch.nn.Module, split: Split, labels: Mapping[int | str, str], out_dir: Path,
                     patch_size: Any, device: torch.device) -> dict[str, Any]:
    """Segment the split's test cases, write ``out_dir/metrics.csv`` and ``metrics.json``; returns the summary
    of ``metrics.json`` (``summarise_cases``), or {} when the split has no test cases."""
    from segsynth.evaluate.metrics import evaluate_cases, summarise_cases, write_metrics
    from segsynth.segment.inference import predict_cases

    if not split.test:
        return {}
    preds = predict_cases(model, split.test, patch_size=patch_size, device=device)
    rows = evaluate_cases(preds, split.test, labels)
    write_metrics(rows, out_dir)
    return summarise_cases(rows)


def model_record(method: str, n_train: int, seed: int, result: TrainResult, split: Split,
                 device: torch.device) -> dict[str, Any]:
    """What a saved segmenter's ``model.json`` records of the run that trained it."""
    from segsynth.utils.device import compute_description

    return {"method": method, "n_train": n_train, "seed": seed, "val_dice": result.best_val_dice,
            "train_cases": [c.case_id for c in split.train], "trained_on": compute_description(device)}


def run_summary(method: str, n_train: int, seed: int, result: TrainResult, split: Split, device: torch.device,
                options: Mapping[str, Any], test: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The fields of ``summary.json``; ``test`` is what ``score_test_cases`` returned ({}: no test fields),
    ``extra`` the command's own (GenSeg: its architecture and search)."""
    from segsynth.utils.device import compute_description

    summary: dict[str, Any] = {
        "method": method, "n_train": n_train, "seed": seed, "val_dice": result.best_val_dice,
        "best_step": result.best_step, "steps": result.steps, "train_seconds": result.seconds,
        "peak_memory_mb": result.peak_memory_mb, "precision": result.precision, **compute_description(device),
        "options": dict(options), "train_cases": [c.case_id for c in split.train],
        "val_cases": [c.case_id for c in split.val], **extra}
    if test:
        summary.update({"test_dice": test.get("dice_mean"), "test_hd95": test.get("hd95_mean"),
                        "n_test": test.get("n_cases")})
    return summary
