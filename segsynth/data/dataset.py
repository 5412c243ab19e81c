"""Load a dataset folder into validated, preprocessed ``Case`` objects.

``load_dataset(root, spec)`` finds the layout (``segsynth.data.layouts``), reads and validates every pair,
maps raw mask values to contiguous class ids, and preprocesses (``segsynth.data.preprocess``).

3D volumes with ``spec.spatial_dims == 2``: the result holds **2D slices**, each with
``meta["volume_id"]`` (and ``slice_index``). ``split_cases`` groups by ``volume_id``, so a volume's slices
all land in one split, and the ``n_train`` / ``n_val`` / ``n_test`` counts there are counts of volumes:
a test volume's slices never enter training. ``info.spatial_dims`` is then 2 and
``info.extra["source_spatial_dims"]`` is 3. To evaluate on whole volumes, load the same folder again with
``spatial_dims=None`` and pick the volumes of the test split by ``volume_id``.

Validation (each failure is a ``DataError`` naming the file or folder): the folder exists and holds
pairs; every file exists and reads (not empty, not truncated); image and mask spatial shapes match;
NIfTI image and mask affines agree (within ``AFFINE_TOLERANCE``); all channel files of a case share a
shape; every mask value is in the label map; no NaN/inf intensities; 2D and 3D are not mixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segsynth.data.case import Case, DatasetInfo, LoadedDataset
from segsynth.data.io import file_format, read_image, read_mask
from segsynth.data.layouts import Layout, PairRecord, find_layout
from segsynth.data.preprocess import PreprocessSpec, apply_spec
from segsynth.errors import DataError
from segsynth.utils.progress import progress_iter

AFFINE_TOLERANCE = 1e-3  # relative to the largest affine entry (mm); 1e-3 of 200 mm = 0.2 mm


def _read_case_image(record: PairRecord) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the image file(s) of a case and stack channel files into C."""
    arrays, metas = [], []
    for p in record.images:
        arr, meta = read_image(p)
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise DataError(f"channel file has shape {tuple(arr.shape[1:])} but {record.images[0].name} has "
                            f"{tuple(arrays[0].shape[1:])}", p)
        arrays.append(arr)
        metas.append(meta)
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    meta = dict(metas[0])
    meta["path"] = [str(p) for p in record.images] if len(record.images) > 1 else str(record.images[0])
    return image, meta


def affines_match(a: Any, b: Any, tol: float = AFFINE_TOLERANCE) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
    return bool(np.abs(a - b).max() <= tol * scale)


def map_mask_values(mask: np.ndarray, value_map: dict[int, int], path: Path | str) -> np.ndarray:
    """Raw values -> contiguous ids; any value not in ``value_map`` is a ``DataError`` listing the values."""
    values = np.unique(mask)
    unknown = [int(v) for v in values if int(v) not in value_map]
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        raise DataError(f"mask values {shown} are not in the label map (known values: "
                        f"{', '.join(map(str, sorted(value_map)))})", path)
    raw = np.array(sorted(value_map), dtype=np.int64)
    ids = np.array([value_map[int(v)] for v in raw], dtype=np.int64)
    return ids[np.searchsorted(raw, mask)]


def read_pair(layout: Layout, record: PairRecord, *, with_mask: bool = True) -> Case:
    """Read and validate one case: image (as read, float32) and mask mapped to contiguous class ids.

    Raises:
        DataError: any problem with the files of this case, naming the file.
    """
    image, imeta = _read_case_image(record)
    meta: dict[str, Any] = {
        "case_id": record.case_id,
        "dataset": layout.name,
        "dataset_root": str(layout.root),
        "image_path": imeta["path"],
        "format": imeta["format"],
        "dtype": imeta["dtype"],
        "spacing": imeta["spacing"],
        "source_shape": list(image.shape[1:]),
    }
    if "affine" in imeta:
        meta["affine"] = imeta["affine"]
    if record.volume_id is not None:
        meta["volume_id"] = record.volume_id
    mask = None
    if with_mask and record.mask is not None:
        raw, mmeta = read_mask(record.mask)
        if tuple(raw.shape) != tuple(image.shape[1:]):
            raise DataError(f"mask shape {tuple(raw.shape)} does not match image shape {tuple(image.shape[1:])} "
                            f"({record.images[0].name})", record.mask)
        if "affine" in imeta and "affine" in mmeta and not affines_match(imeta["affine"], mmeta["affine"]):
            diff = float(np.abs(np.asarray(imeta["affine"]) - np.asarray(mmeta["affine"])).max())
            raise DataError(f"mask and image ({record.images[0].name}) are not in the same space: affines "
                            f"differ by up to {diff:.4g}", record.mask)
        mask = map_mask_values(raw, layout.value_map, record.mask)
        meta["mask_path"] = str(record.mask)
    return Case(record.case_id, image, mask, meta)


def _normalise_override(layout: Layout, spec: PreprocessSpec) -> str | None:
    """Datasets written by segsynth say how they were normalised; "auto" then respects that."""
    hint = layout.info.get("segsynth", {})
    if spec.normalise == "auto" and isinstance(hint, dict) and hint.get("normalise") in ("none", "unit"):
        return str(hint["normalise"])
    return None


def _harmonise_channels(cases: list[Case], root: Path) -> int:
    counts = sorted({c.in_channels for c in cases})
    if len(counts) == 1:
        return counts[0]
    if counts == [1, 3]:
        for c in cases:
            if c.in_channels == 1:
                c.image = np.repeat(c.image, 3, axis=0)
                c.meta["grey_to_rgb"] = True
        return 3
    odd = next(c for c in cases if c.in_channels != cases[0].in_channels)
    raise DataError(f"cases have different numbers of channels {counts} (e.g. {odd.case_id}: {odd.in_channels}, "
                    f"{cases[0].case_id}: {cases[0].in_channels})", root)


def _check_dims(raw: Case, first_dims: int | None, spec: PreprocessSpec, layout: Layout, record: PairRecord) -> int:
    if first_dims is not None and raw.spatial_dims != first_dims:
        raise DataError(f"this case is {raw.spatial_dims}D but earlier cases are {first_dims}D", record.images[0])
    if spec.spatial_dims == 3 and raw.spatial_dims == 2:
        raise DataError("spatial_dims=3 was asked for but the images are 2D", layout.root)
    return raw.spatial_dims


def _predictions_format(layout: Layout) -> str:
    for p in layout.pairs:
        if p.mask is not None:
            fmt = file_format(p.mask)
            return fmt if fmt in ("nifti", "png") else "png"
    fmt = layout.file_format
    return fmt if fmt == "nifti" else "png"


def require_foreground(found: bool, n_cases: int, root: str | Path) -> None:
    """The rule ``load_dataset`` (train, sweep, ...) and ``check_dataset`` (check-data) share: labelled data whose
    masks hold no pixel of any class (``found`` is False) cannot be used, there is nothing to learn or measure.

    Raises:
        DataError: naming ``root``.
    """
    if not found:
        raise DataError(f"every mask of the {n_cases} cases is background only (no pixel of any class): there "
                        "is nothing to learn or measure; check the masks and their values with `segsynth check-data`",
                        root)


def load_dataset(root: str | Path, spec: PreprocessSpec | None = None, *, unlabelled_ok: bool = False,
                 max_cases: int | None = None, progress: bool = True) -> LoadedDataset:
    """Load, validate and preprocess every case of a dataset folder.

    Args:
        root: the dataset folder (any layout ``find_layout`` knows).
        spec: preprocessing; default ``PreprocessSpec()`` (native dims, 2D at 128x128, "auto" intensity).
        unlabelled_ok: also accept cases without a mask (they get ``mask=None``).
        max_cases: read only the first N cases in case-id order (volumes, for 3D data cut into slices).
        progress: show a progress bar.

    Returns:
        ``LoadedDataset(info, cases)``; masks hold contiguous ids ``0..K-1`` with names ``info.labels``.
        With 3D data and ``spec.spatial_dims == 2`` the cases are 2D slices carrying ``meta["volume_id"]``.

    Raises:
        DataError: any invalid folder or file (see the module docstring).
    """
    spec = spec or PreprocessSpec()
    root = Path(root)
    layout = find_layout(root, unlabelled_ok=unlabelled_ok)
    records = layout.pairs if max_cases is None else layout.pairs[: max(0, int(max_cases))]
    if not records:
        raise DataError("dataset is empty (no cases to load)", root)
    override = _normalise_override(layout, spec)
    cases: list[Case] = []
    source_dims: int | None = None
    for record in progress_iter(records, f"loading {layout.name}", progress):
        raw = read_pair(layout, record)
        source_dims = _check_dims(raw, source_dims, spec, layout, record)
        cases.extend(apply_spec(raw, spec, modality=layout.modality, file_format=raw.meta["format"],
                                normalise=override))
    if not cases:
        raise DataError("no cases left after preprocessing (every slice was empty?)", root)
    if not unlabelled_ok:
        require_foreground(any(bool(np.any(c.mask)) for c in cases if c.mask is not None), len(records), root)
    in_channels = _harmonise_channels(cases, root)
    assert source_dims is not None
    sliced = source_dims == 3 and spec.spatial_dims == 2
    info = DatasetInfo(
        name=layout.name,
        labels=dict(layout.labels),
        modality=layout.modality,
        spatial_dims=cases[0].spatial_dims,
        in_channels=in_channels,
        root=str(root),
        file_format=_predictions_format(layout),
        extra={
            "layout": layout.kind,
            "value_map": {str(k): v for k, v in sorted(layout.value_map.items())},
            "values_detected": layout.values_detected,
            "source_spatial_dims": source_dims,
            "sliced": sliced,
            "num_volumes" if sliced else "num_files": len(records),
            "normalise": cases[0].meta.get("normalise"),
            "modality_text": layout.modality_text,
            "preprocess": spec.to_json(),
            **{k: v for k, v in layout.info.items() if k in ("licence", "license", "citation", "source",
                                                               "reference", "synthetic")},
        },
    )
    return LoadedDataset(info, cases)


def load_unlabelled(root: str | Path, spec: PreprocessSpec | None = None, *, max_cases: int | None = None,
                    progress: bool = True) -> list[Case]:
    """Images only (``mask=None``), preprocessed like ``load_dataset``, from any layout.

    A labelled folder works too: its masks are ignored. 3D volumes cut into slices keep every slice whose
    image is not constant.
    """
    spec = spec or PreprocessSpec()
    root = Path(root)
    layout = find_layout(root, unlabelled_ok=True, scan_values=False)
    records = layout.pairs if max_cases is None else layout.pairs[: max(0, int(max_cases))]
    override = _normalise_override(layout, spec)
    cases: list[Case] = []
    dims: int | None = None
    for record in progress_iter(records, f"loading {layout.name} (images)", progress):
        raw = read_pair(layout, record, with_mask=False)
        dims = _check_dims(raw, dims, spec, layout, record)
        cases.extend(apply_spec(raw, spec, modality=layout.modality, file_format=raw.meta["format"],
                                normalise=override))
    if not cases:
        raise DataError("no images found", root)
    _harmonise_channels(cases, root)
    return cases


def value_map_of(info: DatasetInfo) -> dict[int, int]:
    """Raw mask value -> class id of a loaded dataset (identity over its class ids when it recorded none)."""
    recorded = info.extra.get("value_map")
    if recorded:
        return {int(k): int(v) for k, v in recorded.items()}
    return {int(k): int(k) for k in info.labels}


def load_masks(path: str | Path, value_map: dict[int, int], shape: tuple[int, ...], *,
               max_masks: int | None = None, progress: bool = True) -> tuple[list[np.ndarray], list[str]]:
    """Label maps without images (a folder, e.g. ISIC's ``masks_only_train2000/``, or one file), brought to the
    working ``shape``.

    A mask's values are mapped with ``value_map`` (raw value -> class id: the labelled dataset's,
    ``value_map_of(info)``) when they are all raw values of it, and taken as class ids when they are all class
    ids. A 2D mask is resized (nearest) to ``shape``, a 3D one centre cropped / padded, as the dataset's masks
    were. Files are read in name order; ``max_masks`` keeps the first N.

    Returns:
        (masks, ids): int64 arrays of ``shape`` and the file stems.

    Raises:
        DataError: a missing or empty folder, an unreadable mask, values that are neither, or a mask of
            another dimensionality than ``shape`` (each naming the file).
    """
    from segsynth.data.io import file_stem, is_image_file
    from segsynth.data.preprocess import crop_or_pad, resize_case

    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if is_image_file(p))
    else:
        raise DataError("mask folder not found", path)
    if max_masks is not None:
        files = files[: max(0, int(max_masks))]
    if not files:
        raise DataError("no mask files in the folder (png, jpg, tif, bmp or NIfTI)", path)
    ids_known = set(value_map.values())
    masks, ids = [], []
    for f in progress_iter(files, f"loading masks of {path.name}", progress):
        raw, _ = read_mask(f)
        if raw.ndim != len(shape):
            raise DataError(f"mask is {raw.ndim}D but the labelled cases are {len(shape)}D {tuple(shape)}", f)
        values = {int(v) for v in np.unique(raw)}
        if values <= set(value_map):
            mask = map_mask_values(raw, value_map, f)
        elif values <= ids_known:
            mask = raw.astype(np.int64)  # already class ids
        else:
            raise DataError(f"mask values {sorted(values)} are neither the dataset's stored mask values "
                            f"{sorted(value_map)} nor its class ids {sorted(ids_known)}", f)
        case = Case(file_stem(f), np.zeros((1, *mask.shape), np.float32), mask)
        case = resize_case(case, shape) if len(shape) == 2 else crop_or_pad(case, shape)
        masks.append(np.asarray(case.mask, dtype=np.int64))
        ids.append(case.case_id)
    return masks, ids
