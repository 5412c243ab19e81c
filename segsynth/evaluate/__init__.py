"""Evaluation: per-case Dice/HD95 (MONAI) and paired statistics across methods and seeds."""

from segsynth.evaluate.metrics import (
    case_metrics,
    case_spacing,
    evaluate_cases,
    summarise_cases,
    write_metrics,
)
from segsynth.evaluate.stats import ci95, compare_methods, mean_sd, paired_tests, summarise_runs

__all__ = [
    "case_metrics",
    "case_spacing",
    "ci95",
    "compare_methods",
    "evaluate_cases",
    "mean_sd",
    "paired_tests",
    "summarise_cases",
    "summarise_runs",
    "write_metrics",
]
