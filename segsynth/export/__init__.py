"""Export any dataset folder or list of Cases to the formats other tools train on.

* ``segsynth.export.nnunet.export_nnunet``: nnU-Net v2 raw (``DatasetXXX_Name/`` with dataset.json,
  ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``imagesTs/`` for unlabelled cases).
* ``segsynth.export.msd.export_msd``: Medical Segmentation Decathlon (``imagesTr/<case>.nii.gz`` with all
  channels in one 4D file, ``labelsTr/``, dataset.json with ``training`` / ``test`` lists).

Both stream one case at a time (flat memory) from the source and write into a hidden folder that is renamed
into place when complete. A folder source is exported at its native resolution and intensities (files are
read, mask values mapped to contiguous class ids, nothing resampled); Cases are written as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import DataError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ExportSource:
    """What is exported: dataset description, number of cases, and a one-at-a-time case iterator."""

    name: str
    labels: dict[int, str]
    modality: str
    extra: dict[str, Any]
    count: int
    _cases: Any

    def __iter__(self) -> Iterator[Case]:
        return iter(self._cases())


def safe_id(case_id: str) -> str:
    """A case id usable as a file name (unsafe characters become '_')."""
    out = _UNSAFE.sub("_", str(case_id)).strip("._") or "case"
    return out


def unique_safe_id(case_id: str, used: set[str]) -> str:
    """``safe_id`` made unique among ``used`` (``_1``, ``_2``, ... appended); the result is added to ``used``."""
    cid = base = safe_id(case_id)
    k = 1
    while cid in used:
        cid, k = f"{base}_{k}", k + 1
    used.add(cid)
    return cid


def open_source(source: str | Path | Sequence[Case], info: DatasetInfo | None = None) -> ExportSource:
    """A dataset folder (any layout segsynth reads) or a list of Cases (with ``info`` naming the classes)."""
    if isinstance(source, (str, Path)):
        import json

        from segsynth.data.dataset import read_pair
        from segsynth.data.layouts import find_layout

        root = Path(source)
        layout = find_layout(root, unlabelled_ok=True)
        if not layout.pairs:
            raise DataError("dataset is empty (no cases to export)", root)
        extra: dict[str, Any] = dict(layout.info)
        prov = root / "provenance.jsonl"
        if prov.exists():
            extra["provenance_file"] = str(prov)
        djson = root / "dataset.json"
        if djson.exists():
            try:
                meta = json.loads(djson.read_text())
                if isinstance(meta, dict) and "synthetic" in meta:
                    extra["synthetic"] = meta["synthetic"]
            except (OSError, ValueError):
                pass

        def cases() -> Iterator[Case]:
            for rec in layout.pairs:
                yield read_pair(layout, rec)

        return ExportSource(layout.name, dict(layout.labels), layout.modality, extra, len(layout.pairs), cases)
    cases_list = list(source)
    if not cases_list:
        raise DataError("no cases to export")
    if info is None:
        k = max((int(c.mask.max()) for c in cases_list if c.mask is not None), default=0) + 1
        labels = {0: "background", **{i: f"class_{i}" for i in range(1, max(k, 2))}}
        name, modality, extra = "segsynth", "other", {}
    else:
        labels, name, modality, extra = dict(info.labels), info.name, info.modality, dict(info.extra)
    return ExportSource(name, labels, modality, extra, len(cases_list), lambda: iter(cases_list))


def file_meta(case: Case) -> dict[str, Any]:
    """The geometry to write with a case's files (affine / spacing when known and consistent)."""
    out: dict[str, Any] = {}
    if "affine" in case.meta:
        out["affine"] = case.meta["affine"]
    sp = case.meta.get("spacing")
    if sp is not None and len(sp) == case.spatial_dims:
        out["spacing"] = sp
    return out


__all__ = ["ExportSource", "open_source", "safe_id", "unique_safe_id", "file_meta"]
