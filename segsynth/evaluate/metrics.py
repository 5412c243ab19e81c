"""Per-case, per-class Dice and HD95 (MONAI), and their CSV/JSON outputs.

Conventions (every table, statistic and report in segsynth relies on them):

- Masks hold contiguous class ids; ``labels`` maps id -> name and includes 0 (background). Metrics are
  computed for the foreground classes (every id except 0), each one-hot as its own channel, so a class
  never counts as another.
- Dice is MONAI's ``compute_dice``; HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)`` (the
  95th percentile of the symmetric surface distances), in physical units when a voxel ``spacing`` is
  given, in voxels otherwise.
- Empty masks:

  ============================  ======  ===============================
  prediction / ground truth      Dice    HD95
  ============================  ======  ===============================
  both empty                     1.0     0.0
  exactly one empty              0.0     missing (``None`` / empty cell)
  ============================  ======  ===============================

  An HD95 with one side empty has no finite value; it is recorded as ``None`` in JSON and as an empty
  cell in CSV, and left out of means (which therefore average the classes where it is defined; the
  number of missing values is counted in ``hd95_missing``). Dice already penalises that case with 0.
- ``dice_mean`` / ``hd95_mean`` of a case are the means over its foreground classes.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case
from segsynth.errors import DataError
from segsynth.utils.files import atomic_path, write_json

Spacing = float | Sequence[float] | None


def foreground_labels(labels: Mapping[int | str, str]) -> dict[int, str]:
    """Foreground classes (id != 0) of a label map whose keys may be ints or JSON strings, sorted by id."""
    out = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    return dict(sorted(out.items()))


def _spacing_tuple(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    if isinstance(spacing, int | float):
        values = (float(spacing),) * ndim
    else:
        values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {spacing!r} does not fit a {ndim}-D mask (need {ndim} positive numbers)")
    return values


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    labels: Mapping[int | str, str],
    spacing: Spacing = None,
) -> dict[str, Any]:
    """Dice and HD95 of one predicted mask against its ground truth, per foreground class.

    Args:
        pred: predicted class ids, spatial shape ``(*S)`` (2D or 3D), integer.
        target: ground-truth class ids, same shape.
        labels: class id -> name, including 0 (background); keys may be JSON strings.
        spacing: voxel size per spatial axis (or one number for isotropic voxels); HD95 is then in the
            same physical unit (mm for NIfTI). ``None`` gives HD95 in voxels.

    Returns:
        ``{"dice": {name: float}, "hd95": {name: float | None}, "dice_mean": float,
        "hd95_mean": float | None, "hd95_missing": int, "hd95_unit": "mm" | "voxel"}`` — see the module
        docstring for empty masks. "mm" stands for the unit of ``spacing`` (mm for NIfTI).
    """
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
    t = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D class-id arrays, got shape {p.shape}")
    fg = foreground_labels(labels)
    if not fg:
        raise ValueError("labels name no foreground class (only 0)")
    space = _spacing_tuple(spacing, p.ndim)

    dice: dict[str, float] = {}
    hd95: dict[str, float | None] = {}
    both_present: list[tuple[str, np.ndarray, np.ndarray]] = []
    for k, name in fg.items():
        pk, tk = p == k, t == k
        p_any, t_any = bool(pk.any()), bool(tk.any())
        if not p_any and not t_any:
            dice[name], hd95[name] = 1.0, 0.0
        elif p_any != t_any:
            dice[name], hd95[name] = 0.0, None
        else:
            both_present.append((name, pk, tk))

    if both_present:
        from monai.metrics import compute_dice, compute_hausdorff_distance

        # One batch item, one channel per class that both masks contain: (1, C, *S).
        yp = torch.from_numpy(np.stack([pk for _, pk, _ in both_present])[None].astype(np.float32))
        yt = torch.from_numpy(np.stack([tk for _, _, tk in both_present])[None].astype(np.float32))
        with warnings.catch_warnings():
            # MONAI 1.6 warns about its own deprecated internal argument on every call.
            warnings.simplefilter("ignore", FutureWarning)
            d = compute_dice(yp, yt, include_background=True, ignore_empty=False)[0]
            h = compute_hausdorff_distance(
                yp, yt, include_background=True, percentile=95, spacing=list(space) if space else None
            )[0]
        for i, (name, _, _) in enumerate(both_present):
            dice[name] = float(d[i])
            hd = float(h[i])
            hd95[name] = hd if math.isfinite(hd) else None

    # Keep the label order for the dicts (both_present were filled after the empty ones).
    dice = {name: dice[name] for name in fg.values()}
    hd95 = {name: hd95[name] for name in fg.values()}
    hd_values = [v for v in hd95.values() if v is not None]
    return {
        "dice": dice,
        "hd95": hd95,
        "dice_mean": float(np.mean(list(dice.values()))),
        "hd95_mean": float(np.mean(hd_values)) if hd_values else None,
        "hd95_missing": len(hd95) - len(hd_values),
        "hd95_unit": "mm" if space is not None else "voxel",
    }


def case_spacing(case: Case) -> tuple[float, ...] | None:
    """The physical voxel size of ``case.mask`` as evaluated, or None when it is not known.

    ``meta["array_spacing"]``, when the data layer sets it, is taken as is (the spacing of the array
    handed out). Otherwise the spacing is derived from the file's ``meta["spacing"]`` and what the
    preprocessing recorded: a 3D volume's spacing loses the ``slice_axis`` for a 2D slice, and a resize
    from ``original_shape`` to ``resized_to`` scales it by ``original / resized`` per axis (crops do not
    change it). PNG/JPEG files carry no physical spacing (their nominal 1.0 is a pixel), so they give
    None, as does anything that does not fit the mask's dimensions: HD95 is then in voxels/pixels.
    """
    meta, mask = case.meta, case.mask
    if mask is None:
        return None
    ndim = mask.ndim

    def _valid(values: Sequence[float]) -> tuple[float, ...] | None:
        try:
            return _spacing_tuple(list(values), ndim) if len(values) == ndim else None
        except (TypeError, ValueError):
            return None

    if meta.get("array_spacing") is not None:
        return _valid(list(meta["array_spacing"]))
    spacing = meta.get("spacing")
    if spacing is None or meta.get("format", "nifti") != "nifti":
        return None
    sp = [float(spacing)] * ndim if isinstance(spacing, int | float) else [float(v) for v in spacing]
    orig, resized = meta.get("original_shape"), meta.get("resized_to")
    axis = meta.get("slice_axis")

    def _rescale(values: list[float]) -> list[float]:
        if orig is not None and resized is not None and len(orig) == len(resized) == len(values):
            return [v * o / r for v, o, r in zip(values, orig, resized)]
        return values

    sp = _rescale(sp)  # a 3D resize before slicing, or a 2D/3D resize of a case of the file's dims
    if len(sp) == ndim + 1 and axis is not None and 0 <= int(axis) < len(sp):
        sp = [v for i, v in enumerate(sp) if i != int(axis)]
        sp = _rescale(sp)  # a 2D resize of the slice
    return _valid(sp)


def evaluate_cases(
    preds: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    cases: Sequence[Case],
    labels: Mapping[int | str, str],
    *,
    use_spacing: bool = True,
) -> list[dict[str, Any]]:
    """Metrics for each labelled case: one row per case, in the order of ``cases``.

    Args:
        preds: predicted masks, either aligned with ``cases`` or keyed by ``case_id``.
        cases: the ground-truth cases (each must have a mask).
        labels: class id -> name including 0.
        use_spacing: take HD95 in physical units from ``case.meta["spacing"]`` where available.

    Returns:
        Rows ``{"case_id", "dice", "hd95", "dice_mean", "hd95_mean", "hd95_missing", "hd95_unit"}``, the
        ``per_case`` format of a sweep record.
    """
    if isinstance(preds, Mapping):
        missing = [c.case_id for c in cases if c.case_id not in preds]
        if missing:
            raise ValueError(f"no prediction for case(s) {missing[:5]}")
        aligned = [preds[c.case_id] for c in cases]
    else:
        aligned = list(preds)
        if len(aligned) != len(cases):
            raise ValueError(f"{len(aligned)} predictions for {len(cases)} cases")
    rows = []
    for pred, case in zip(aligned, cases):
        if case.mask is None:
            raise DataError(
                "case has no ground-truth mask to evaluate against",
                case.meta.get("mask_path") or case.case_id,
            )
        spacing = case_spacing(case) if use_spacing else None
        rows.append({"case_id": case.case_id, **case_metrics(pred, case.mask, labels, spacing)})
    return rows


def summarise_cases(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over cases: per-class Dice and HD95 (HD95 over the cases where it is defined) and overall."""

    def _mean(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    names = list(rows[0]["dice"]) if rows else []
    return {
        "n_cases": len(rows),
        "dice_mean": _mean([r["dice_mean"] for r in rows]),
        "hd95_mean": _mean([r.get("hd95_mean") for r in rows]),
        "dice": {n: _mean([r["dice"].get(n) for r in rows]) for n in names},
        "hd95": {n: _mean([r["hd95"].get(n) for r in rows]) for n in names},
        "hd95_missing": int(sum(r.get("hd95_missing", 0) for r in rows)),
    }


def write_metrics(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.csv`` (one line per case; missing HD95 = empty cell) and ``metrics.json``
    (``{"summary": ..., "cases": rows}``), each atomically. Returns both paths."""
    out_dir = Path(out_dir)
    names = list(rows[0]["dice"]) if rows else []
    fields = ["case_id", "dice_mean", "hd95_mean"]
    fields += [f"dice_{n}" for n in names] + [f"hd95_{n}" for n in names] + ["hd95_unit"]

    def _cell(v: Any) -> Any:
        return "" if v is None else v

    csv_path = out_dir / "metrics.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            line = [r["case_id"], r["dice_mean"], _cell(r.get("hd95_mean"))]
            line += [_cell(r["dice"].get(n)) for n in names]
            line += [_cell(r["hd95"].get(n)) for n in names]
            line.append(r.get("hd95_unit", "voxel"))
            writer.writerow(line)
    json_path = out_dir / "metrics.json"
    write_json(json_path, {"summary": summarise_cases(rows), "cases": [dict(r) for r in rows]})
    return csv_path, json_path
