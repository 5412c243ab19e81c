"""Validate a dataset folder and summarise it, collecting every problem instead of stopping at the first.

``segsynth check-data DIR`` prints ``check_dataset(DIR).format()`` and exits non-zero when
``report.problems`` is not empty.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.data.dataset import read_pair, require_foreground
from segsynth.data.io import read_mask
from segsynth.data.layouts import Layout, find_layout, value_map_from_raw
from segsynth.data.preprocess import PreprocessSpec, apply_spec
from segsynth.errors import SegsynthError
from segsynth.utils.progress import progress_iter

MAX_DETECTED_VALUES = 64


@dataclass
class CheckReport:
    """What ``check_dataset`` found. ``problems`` make the folder unusable; ``warnings`` do not."""

    root: str
    name: str | None = None
    layout: str | None = None
    modality: str | None = None
    modality_text: str = ""
    file_format: str | None = None
    n_cases: int = 0
    n_labelled: int = 0
    n_read: int = 0
    spatial_dims: list[int] = field(default_factory=list)
    size_min: list[int] | None = None
    size_max: list[int] | None = None
    channels: list[int] = field(default_factory=list)
    spacing_min: list[float] | None = None
    spacing_max: list[float] | None = None
    intensity_min: float | None = None
    intensity_max: float | None = None
    dtypes: list[str] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)
    value_map: dict[int, int] = field(default_factory=dict)
    values_detected: bool = False
    class_voxels: dict[int, int] = field(default_factory=dict)
    class_cases: dict[int, int] = field(default_factory=dict)
    n_working_cases: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("labels", "value_map", "class_voxels", "class_cases"):
            d[k] = {str(key): v for key, v in d[k].items()}
        d["ok"] = self.ok
        return d

    def format(self) -> str:
        """A readable multi-line summary."""
        lines = [f"Dataset: {self.name or '?'}  ({self.root})"]
        if self.layout is None:
            lines.append("Layout: not recognised")
        else:
            mod = f"{self.modality}" + (f" (from {self.modality_text!r})" if self.modality_text else "")
            lines.append(f"Layout: {self.layout}   modality: {mod}   file format: {self.file_format}")
            lines.append(f"Cases: {self.n_cases} ({self.n_labelled} labelled), read without problems: "
                         f"{self.n_read}")
            if self.size_min is not None:
                dims = "/".join(f"{d}D" for d in self.spatial_dims)
                lines.append(f"Image size: {_fmt_shape(self.size_min)} .. {_fmt_shape(self.size_max)} ({dims}), "
                             f"channels: {', '.join(map(str, self.channels))}")
            if self.spacing_min is not None:
                lines.append(f"Spacing: {_fmt_float(self.spacing_min)} .. {_fmt_float(self.spacing_max)}")
            if self.intensity_min is not None:
                lines.append(f"Intensities (as stored): {self.intensity_min:.4g} .. {self.intensity_max:.4g}")
            wide = [d for d in self.dtypes if d in ("uint16", "int16", "int32", "uint32")]
            if wide and self.file_format != "nifti" and self.intensity_max is not None:
                bits = max(8, math.ceil(math.log2(max(self.intensity_max, 0) + 1)))
                lines.append(f"Pixel type: {', '.join(self.dtypes)}: "
                             f"{'16-bit' if any(d.endswith('int16') for d in wide) else 'wider than 8-bit'} images, read with their full range "
                             f"(not cut to 8 bits); [0, 1] normalisation divides by the bits in use ({bits} bits "
                             f"here: / {2**bits - 1})")
            if self.n_working_cases is not None:
                lines.append(f"Working cases after preprocessing: {self.n_working_cases}")
            if self.labels and self.n_labelled:
                how = "detected from the masks" if self.values_detected else "from dataset.json"
                lines.append(f"Classes ({len(self.labels)}, mask values {how}):")
                raw_of = {cid: raw for raw, cid in self.value_map.items()}
                total = sum(self.class_voxels.values()) or 1
                width = max(len(n) for n in self.labels.values())
                for cid, name in sorted(self.labels.items()):
                    vox = self.class_voxels.get(cid, 0)
                    lines.append(f"  {cid:>3} {name:<{width}}  raw value {raw_of.get(cid, '?'):>5}  "
                                 f"{vox:>14,} px/voxels ({100.0 * vox / total:5.2f}%)  in "
                                 f"{self.class_cases.get(cid, 0)} cases")
        for w in self.warnings:
            lines.append(f"Warning: {w}")
        if self.problems:
            lines.append(f"Problems ({len(self.problems)}):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("Problems: none")
        return "\n".join(lines)


def _fmt_shape(s: list[int] | None) -> str:
    return "x".join(map(str, s)) if s else "?"


def _fmt_float(s: list[float] | None) -> str:
    return "x".join(f"{v:.3g}" for v in s) if s else "?"


def _detect_values(layout: Layout, report: CheckReport) -> None:
    """Fill the layout's value map from the masks, recording unreadable masks as problems."""
    seen: set[int] = set()
    for p in layout.pairs:
        if p.mask is None:
            continue
        try:
            arr, _ = read_mask(p.mask)
        except SegsynthError as e:
            report.problems.append(str(e))
            continue
        seen.update(int(v) for v in np.unique(arr))
        if len(seen) > MAX_DETECTED_VALUES:
            report.problems.append(f"{p.mask}: masks hold more than {MAX_DETECTED_VALUES} distinct values; are "
                                   "they lossy JPEGs or images? Give a dataset.json with 'mask_values'")
            return
    raw_names = {v: ("background" if v == 0 else f"class_{v}") for v in sorted(seen)}
    layout.value_map, layout.labels = value_map_from_raw(raw_names)
    layout.values_detected = True


def check_dataset(root: str | Path, spec: PreprocessSpec | None = None, *, max_cases: int | None = None,
                  progress: bool = False) -> CheckReport:
    """Check every case of a dataset folder; never raises for data problems (they go in ``problems``).

    Args:
        root: the dataset folder.
        spec: also run this preprocessing on every case (e.g. to check 2D slicing); None = files only.
        max_cases: check only the first N cases.
        progress: show a progress bar.
    """
    root = Path(root)
    report = CheckReport(root=str(root))
    try:
        layout = find_layout(root, unlabelled_ok=True, scan_values=False)
    except SegsynthError as e:
        report.problems.append(str(e))
        return report
    records = layout.pairs if max_cases is None else layout.pairs[: max(0, int(max_cases))]
    report.name, report.layout, report.modality = layout.name, layout.kind, layout.modality
    report.modality_text, report.file_format = layout.modality_text, layout.file_format
    report.n_cases = len(layout.pairs)
    report.n_labelled = sum(p.mask is not None for p in layout.pairs)
    if report.n_labelled == 0:
        report.problems.append(f"{root}: no masks found (images only); segmentation needs labelled pairs")
    elif report.n_labelled < report.n_cases:
        missing = [p.case_id for p in layout.pairs if p.mask is None]
        report.problems.append(f"{root}: {len(missing)} case(s) have no mask: {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}")
    if report.n_labelled and not layout.value_map:
        _detect_values(layout, report)
    report.labels, report.value_map = dict(layout.labels), dict(layout.value_map)
    report.values_detected = layout.values_detected
    if layout.values_detected:
        report.warnings.append(f"no label map in dataset.json: mask values {sorted(layout.value_map)} were "
                               f"detected and mapped to classes {list(range(len(layout.value_map)))}")

    shapes: list[tuple[int, ...]] = []
    spacings: list[list[float]] = []
    channels: set[int] = set()
    dtypes: set[str] = set()
    dims: set[int] = set()
    lo, hi = np.inf, -np.inf
    voxels = dict.fromkeys(layout.labels, 0)
    in_cases = dict.fromkeys(layout.labels, 0)
    n_working = n_masks = 0
    for record in progress_iter(records, f"checking {layout.name}", progress):
        try:
            case = read_pair(layout, record, with_mask=record.mask is not None and bool(layout.value_map))
        except SegsynthError as e:
            report.problems.append(str(e))
            continue
        report.n_read += 1
        shapes.append(case.spatial_shape)
        spacings.append(list(case.meta.get("spacing", [])))
        channels.add(case.in_channels)
        dims.add(case.spatial_dims)
        lo, hi = min(lo, float(case.image.min())), max(hi, float(case.image.max()))
        dtypes.add(str(case.meta.get("dtype")))
        if case.mask is not None:
            n_masks += 1
            ids, counts = np.unique(case.mask, return_counts=True)
            for i, n in zip(ids.tolist(), counts.tolist()):
                voxels[i] = voxels.get(i, 0) + int(n)
                in_cases[i] = in_cases.get(i, 0) + 1
        if spec is not None:
            try:
                n_working += len(apply_spec(case, spec, modality=layout.modality, file_format=case.meta["format"]))
            except SegsynthError as e:
                report.problems.append(f"{record.images[0]}: preprocessing failed: {e}")

    if shapes:
        nd = max(len(s) for s in shapes)
        same = [s for s in shapes if len(s) == nd]
        report.size_min = [int(min(s[i] for s in same)) for i in range(nd)]
        report.size_max = [int(max(s[i] for s in same)) for i in range(nd)]
        sp = [s for s in spacings if len(s) == nd]
        if sp:
            report.spacing_min = [float(min(s[i] for s in sp)) for i in range(nd)]
            report.spacing_max = [float(max(s[i] for s in sp)) for i in range(nd)]
        report.intensity_min, report.intensity_max = float(lo), float(hi)
    report.channels, report.spatial_dims = sorted(channels), sorted(dims)
    report.dtypes = sorted(dtypes)
    report.class_voxels, report.class_cases = voxels, in_cases
    if len(dims) > 1:
        report.problems.append(f"{root}: 2D and 3D images are mixed ({sorted(dims)})")
    if len(channels) > 1 and sorted(channels) != [1, 3]:
        report.problems.append(f"{root}: cases have different channel counts {sorted(channels)}")
    elif sorted(channels) == [1, 3]:
        report.warnings.append("some images are grey and some RGB; grey ones will be repeated to 3 channels")
    if spec is not None:
        report.n_working_cases = n_working
    foreground = any(n > 0 for cid, n in voxels.items() if cid != 0)
    if n_masks and not foreground:  # load_dataset's rule (train refuses such masks): a problem, not a warning
        try:
            require_foreground(foreground, n_masks, root)
        except SegsynthError as e:
            report.problems.append(str(e))
    absent = [f"{cid} {name}" for cid, name in layout.labels.items() if cid != 0 and voxels.get(cid, 0) == 0]
    if absent and report.n_read and foreground:  # (no foreground at all is the problem above)
        report.warnings.append(f"classes never present in the masks read: {', '.join(absent)}")
    return report
