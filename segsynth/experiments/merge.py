"""Sweep folders merged by run key, for ``segsynth report``: sweeps split over several machines or Ray clusters.

A run's key is (dataset, test set, segmenter, method, N, seed), what a sweep itself uses to know a run is done.
The same run found in two folders is kept once when both records agree (a folder copied into another); two
finished records of one run that disagree are an error naming both places, since a merged verdict would otherwise
depend on which one was read first. A failed record gives way to a finished one of the same run (a sweep
resumed after a failure holds both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segsynth.errors import DataError

RESULTS = "results.jsonl"


def run_key_of(record: dict[str, Any]) -> tuple[str, str, str, str, int, int]:
    return (str(record.get("dataset", "")), str(record.get("test_set", "")), str(record.get("segmenter", "")),
            str(record.get("method", "")), int(record.get("n_train", -1)), int(record.get("seed", 0)))


def results_file(path: str | Path) -> Path:
    """``path/results.jsonl`` for a sweep folder, ``path`` itself for a .jsonl file; a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
        if not path.is_file():
            raise DataError(f"no {RESULTS} in this folder: not a sweep folder", path.parent)
        return path
    if not path.exists():
        raise DataError("no such file or folder", path)
    if path.suffix != ".jsonl":
        raise DataError(f"expected a sweep folder or its {RESULTS}", path)
    return path


def read_records(path: str | Path) -> list[tuple[dict[str, Any], str]]:
    """The records of one sweep, each with where it came from ("FILE:LINE"). A torn last line (a sweep killed
    mid-write) is left out; any other line that is not a JSON record is an error naming the line."""
    path = results_file(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"not a text file ({e.reason})", path) from e
    out = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                continue  # the run being written when the sweep stopped: its rerun rewrites it
            raise DataError(f"line {i + 1} is not JSON ({e.msg})", path) from e
        if not isinstance(rec, dict) or "method" not in rec or "n_train" not in rec:
            raise DataError(f"line {i + 1} is not a sweep record (no method / n_train)", path)
        out.append((rec, f"{path}:{i + 1}"))
    if not out:
        raise DataError("holds no run records", path)
    return out


def merge_sweeps(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """All records of the given sweep folders (or results.jsonl files), one per run key (see the module
    docstring); order: first appearance."""
    if not paths:
        raise DataError("no sweep folder given", ".")
    kept: dict[tuple, tuple[dict[str, Any], str]] = {}
    for p in paths:
        for rec, where in read_records(p):
            key = run_key_of(rec)
            if key not in kept:
                kept[key] = (rec, where)
                continue
            old, old_where = kept[key]
            ok_new, ok_old = rec.get("status", "ok") == "ok", old.get("status", "ok") == "ok"
            if ok_new and ok_old:
                if _same(old, rec):
                    continue
                raise DataError(f"two different records of one run ({key[3]} N={key[4]} seed={key[5]}, "
                                f"{key[1] or 'test set ?'}) disagree: {old_where} and {where}")
            if ok_new or not ok_old:
                kept[key] = (rec, where)  # a finished run over a failed one; the later of two failures
    return [rec for rec, _ in kept.values()]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


__all__ = ["merge_sweeps", "read_records", "results_file", "run_key_of"]
