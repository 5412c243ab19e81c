"""Write cases (real or synthetic) as a normal dataset folder that ``load_dataset`` reads back.

Output (a "pairs" layout)::

    out_dir/
      dataset.json        name, modality, mask_values (class id -> name), pairs, synthetic (provenance),
                          segsynth: {normalise, spatial_dims, in_channels, format}
      provenance.jsonl    one line per case: case_id, files, and the case's meta
      images/<case_id>.png | .nii.gz
      masks/<case_id>.png  | .nii.gz   (the source's raw mask values: ``info.extra["value_map"]``, raw value ->
                                        class id, as ``load_dataset`` records it; 0/255 in, 0/255 out. Without
                                        one, the contiguous class ids)

Streaming and resume: ``add`` writes the two files of a case at once (each atomically) into a hidden
partial folder ``.<out_dir name>.partial`` beside ``out_dir`` and then appends its line to
``provenance.jsonl``; only the set of written case ids is kept in memory (``close`` reads the pairs back
from ``provenance.jsonl``), so memory does not grow with the records. A case counts as written once its line is there, so a
writer killed at any point can be opened again on the same ``out_dir`` and continues: ``has(case_id)``
says which cases to skip. ``close()`` writes ``dataset.json`` and renames the partial folder to
``out_dir``. If the ``with`` block raises, nothing appears at ``out_dir`` (the partial folder is kept for a
later resume; ``discard()`` removes it).

Formats (``fmt``): "auto" = PNG for 2D photo / X-ray images with 1 or 3 channels (image [0, 1] stored as
8 bit, loaded back as /255), NIfTI float32 otherwise (values kept exactly, e.g. z-scored MRI; loaded back
without renormalising). "png" and "nifti" force a format.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.io import write_image, write_mask
from segsynth.errors import ConfigError, DataError
from segsynth.utils.files import append_jsonl, read_jsonl, write_json

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta through a JSON round trip (numpy values become lists / numbers; others become strings)."""
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(meta, default=default))


def raw_values_of(info: DatasetInfo) -> dict[int, int]:
    """class id -> the raw mask value the source dataset stores for it (``info.extra["value_map"]`` inverted),
    or {} when the info has no usable map (then masks are written as class ids)."""
    vmap = (info.extra or {}).get("value_map") or {}
    try:
        inv = {int(cid): int(raw) for raw, cid in vmap.items()}
    except (TypeError, ValueError):
        return {}
    if sorted(inv) != sorted(info.labels) or len(set(inv.values())) != len(inv) or min(inv.values(), default=0) < 0:
        return {}
    return inv


class DatasetWriter:
    """Stream cases into a dataset folder; resumable; the folder appears whole on ``close()``.

    Example::

        with DatasetWriter("synthetic/genseg_n4", info, provenance={"method": "genseg"}) as w:
            for case in generator_cases:
                if not w.has(case.case_id):
                    w.add(case)

    Args:
        out_dir: the dataset folder to create.
        info: the dataset's classes, modality, dims and channels (names the classes in dataset.json).
        fmt: "auto", "png" or "nifti".
        provenance: how the data was made (method, seed, source dataset, ...), stored under
            ``dataset.json["synthetic"]``.
        name: dataset name (default ``info.name``).
        overwrite: replace an existing ``out_dir`` on close (otherwise an existing one is an error).
        resume: continue a partial folder left by an earlier writer (False starts afresh).
    """

    def __init__(self, out_dir: str | Path, info: DatasetInfo, fmt: str = "auto",
                 provenance: dict[str, Any] | None = None, *, name: str | None = None,
                 overwrite: bool = False, resume: bool = True):
        if fmt not in ("auto", "png", "nifti"):
            raise ConfigError(f"fmt must be 'auto', 'png' or 'nifti', not {fmt!r}")
        self.out_dir = Path(out_dir)
        self.info = info
        self.provenance = dict(provenance or {})
        self.name = name or info.name
        self.overwrite = overwrite
        self.fmt = self._resolve_fmt(fmt)
        self.raw_values = raw_values_of(info)
        self.partial = self.out_dir.parent / f".{self.out_dir.name}.partial"
        self._closed = False
        if self.out_dir.exists() and not overwrite:
            raise DataError("output folder already exists; choose another, or --overwrite replaces it "
                            "(overwrite=True in Python)", self.out_dir)
        self._open(resume)

    # ------------------------------------------------------------------------------------------ set-up

    def _resolve_fmt(self, fmt: str) -> str:
        if fmt != "auto":
            return fmt
        if self.info.spatial_dims == 2 and self.info.modality in ("photo", "xray") and self.info.in_channels in (1, 3):
            return "png"
        return "nifti"

    @property
    def _suffix(self) -> str:
        return ".png" if self.fmt == "png" else ".nii.gz"

    def _state(self) -> dict[str, Any]:
        return {"labels": {str(k): v for k, v in self.info.labels.items()}, "modality": self.info.modality,
                "spatial_dims": self.info.spatial_dims, "in_channels": self.info.in_channels, "fmt": self.fmt,
                "raw_values": {str(k): v for k, v in sorted(self.raw_values.items())}}

    def _open(self, resume: bool) -> None:
        state_path = self.partial / "writer_state.json"
        if self.partial.exists() and (not resume or not state_path.exists()):
            shutil.rmtree(self.partial)
        if self.partial.exists():
            old = json.loads(state_path.read_text(encoding="utf-8"))
            if old != self._state():
                raise DataError("a partial dataset written with other labels/format exists here; resume=False "
                                "starts afresh", self.partial)
        else:
            (self.partial / "images").mkdir(parents=True)
            (self.partial / "masks").mkdir()
            write_json(state_path, self._state())
        self._written: set[str] = {str(rec["case_id"]) for rec in read_jsonl(self.partial / "provenance.jsonl")}
        self._truncate_torn_line()

    def _truncate_torn_line(self) -> None:
        """A kill mid-append can leave a partial last line; cut it so the next line starts clean."""
        path = self.partial / "provenance.jsonl"
        if not path.exists():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(path, "r+b") as f:
                f.truncate(cut)

    # ------------------------------------------------------------------------------------------ writing

    def __len__(self) -> int:
        return len(self._written)

    def has(self, case_id: str) -> bool:
        """True when this case was written whole (by this writer or one that was killed before)."""
        return case_id in self._written

    def add(self, case: Case) -> bool:
        """Write one case now. Returns False (and writes nothing) when it was already written.

        Raises:
            DataError: bad case id, a shape/channel/class that does not match ``info``, or an unlabelled case.
        """
        if self._closed:
            raise DataError("writer is closed", self.out_dir)
        cid = str(case.case_id)
        if not _SAFE_ID.match(cid):
            raise DataError(f"case id {cid!r} is not usable as a file name (letters, digits, . _ + - only)",
                            self.out_dir)
        if self.has(cid):
            return False
        if case.mask is None:
            raise DataError(f"case {cid} has no mask; a written dataset holds pairs", self.out_dir)
        if case.spatial_dims != self.info.spatial_dims or case.in_channels != self.info.in_channels:
            raise DataError(f"case {cid} is {case.spatial_dims}D with {case.in_channels} channel(s) but the "
                            f"dataset is {self.info.spatial_dims}D with {self.info.in_channels}", self.out_dir)
        if tuple(case.mask.shape) != case.spatial_shape:
            raise DataError(f"case {cid}: mask shape {case.mask.shape} != image shape {case.spatial_shape}",
                            self.out_dir)
        values = np.unique(case.mask)
        bad = [int(v) for v in values if int(v) not in self.info.labels]
        if bad:
            raise DataError(f"case {cid}: mask ids {bad} are not classes of the dataset {sorted(self.info.labels)}",
                            self.out_dir)
        image_rel, mask_rel = f"images/{cid}{self._suffix}", f"masks/{cid}{self._suffix}"
        file_meta = {k: case.meta[k] for k in ("affine", "spacing") if k in case.meta}
        if "affine" in file_meta and np.asarray(file_meta["affine"]).shape != (4, 4):
            file_meta.pop("affine")
        if "spacing" in file_meta and len(file_meta["spacing"]) != case.spatial_dims:
            file_meta.pop("spacing")
        if self.fmt == "png":
            lo, hi = float(case.image.min()), float(case.image.max())
            if lo < -0.01 or hi > 1.01:
                raise DataError(f"case {cid}: image values span [{lo:.3g}, {hi:.3g}] but PNG stores [0, 1]; "
                                "use fmt='nifti' for normalised intensities", self.out_dir)
            image = np.clip(case.image, 0.0, 1.0)
        else:
            image = case.image.astype(np.float32)
        write_image(self.partial / image_rel, image, file_meta)
        write_mask(self.partial / mask_rel, self._to_raw(case.mask), file_meta)
        record = {"case_id": cid, "image": image_rel, "mask": mask_rel, "meta": _json_safe(dict(case.meta))}
        append_jsonl(self.partial / "provenance.jsonl", record)
        self._written.add(cid)
        return True

    def take_written(self, src: str | Path, record: dict[str, Any]) -> bool:
        """Adopt a case another writer with the same info and format wrote under ``src`` (its provenance
        ``record``): its files are moved here, not decoded and written again (merging synthesis shards)."""
        cid = str(record["case_id"])
        if self.has(cid):
            return False
        for key in ("image", "mask"):
            rel = Path(record[key])
            if rel.parts[0] not in ("images", "masks") or ".." in rel.parts or rel.suffix != Path(self._suffix).suffix:
                raise DataError(f"case {cid}: unexpected file {rel} in a shard's provenance", src)
            os.replace(Path(src) / rel, self.partial / rel)
        append_jsonl(self.partial / "provenance.jsonl", record)
        self._written.add(cid)
        return True

    def _to_raw(self, mask: np.ndarray) -> np.ndarray:
        if not self.raw_values:
            return mask
        lut = np.array([self.raw_values[i] for i in range(max(self.raw_values) + 1)], dtype=np.int64)
        return lut[mask]

    # ------------------------------------------------------------------------------------------ finishing

    def dataset_json(self) -> dict[str, Any]:
        pairs: dict[str, dict[str, str]] = {}  # by case id, in the order written (read back from the file)
        for r in read_jsonl(self.partial / "provenance.jsonl"):
            entry = {"image": r["image"], "mask": r["mask"]}
            if "volume_id" in r["meta"]:  # slices of one volume stay together in splits after reloading
                entry["volume_id"] = str(r["meta"]["volume_id"])
            pairs.setdefault(str(r["case_id"]), entry)
        return {
            "name": self.name,
            "modality": self.info.modality,
            "mask_values": {str(self.raw_values.get(k, k)): v for k, v in sorted(self.info.labels.items())},
            "numPairs": len(pairs),
            "pairs": list(pairs.values()),
            "synthetic": _json_safe(self.provenance),
            "segsynth": {
                "normalise": "unit" if self.fmt == "png" else "none",
                "spatial_dims": self.info.spatial_dims,
                "in_channels": self.info.in_channels,
                "format": self.fmt,
                "source_dataset": self.info.name,
            },
        }

    def close(self) -> Path:
        """Write dataset.json and move the folder into place; returns ``out_dir``."""
        if self._closed:
            return self.out_dir
        if not self._written:
            raise DataError("no cases were written; refusing to create an empty dataset", self.out_dir)
        write_json(self.partial / "dataset.json", self.dataset_json())
        if self.out_dir.exists():
            if not self.overwrite:
                raise DataError("output folder appeared while writing; not replacing it", self.out_dir)
            shutil.rmtree(self.out_dir)
        os.replace(self.partial, self.out_dir)
        (self.out_dir / "writer_state.json").unlink(missing_ok=True)
        self._closed = True
        return self.out_dir

    def discard(self) -> None:
        """Remove the partial folder (no resume possible afterwards)."""
        shutil.rmtree(self.partial, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        # On an exception the partial folder stays (hidden) for a later resume; out_dir is untouched.
