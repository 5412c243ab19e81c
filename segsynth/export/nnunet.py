"""Export to nnU-Net v2 raw format.

Layout written (``out_root/Dataset{id:03d}_{name}/``)::

    dataset.json     channel_names {"0": ...}, labels {name: id} (background 0), numTraining, file_ending
                     (+ name, description, licence/reference when known, and the synthetic-data provenance)
    imagesTr/<case>_0000.nii.gz  (one file per channel: _0000, _0001, ...)
    labelsTr/<case>.nii.gz
    imagesTs/<case>_0000.nii.gz  (cases without a mask, if any)
    provenance.jsonl (copied when the source is a segsynth synthetic dataset)

Channel names decide nnU-Net's intensity normalisation: "CT" uses CT normalisation, anything else z-score
per image (segsynth writes "MRI", "X-ray", or "R"/"G"/"B"; override with ``channel_names``; data that is
already normalised can use "noNorm"). 2D data is written as 2D NIfTI, which nnU-Net's SimpleITK reader
accepts; ``file_ending=".png"`` writes PNGs instead (images must then be in [0, 1] or 8-bit).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.io import write_image, write_mask
from segsynth.errors import ConfigError, DataError
from segsynth.export import file_meta, open_source, unique_safe_id
from segsynth.utils.files import atomic_dir, write_json

_MODALITY_CHANNEL = {"ct": "CT", "mri": "MRI", "xray": "X-ray"}


def nnunet_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ConfigError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "segsynth"
    return f"Dataset{int(dataset_id):03d}_{clean}"


def default_channel_names(modality: str, in_channels: int) -> dict[str, str]:
    if modality == "photo" and in_channels == 3:
        return {"0": "R", "1": "G", "2": "B"}
    base = _MODALITY_CHANNEL.get(modality, "image")
    return {str(i): base if in_channels == 1 else f"{base}{i}" for i in range(in_channels)}


def nnunet_labels(labels: dict[int, str]) -> dict[str, int]:
    """nnU-Net v2's ``labels``: name -> id, background first, names unique."""
    out: dict[str, int] = {}
    for k in sorted(labels):
        name = "background" if k == 0 else str(labels[k]) or f"class_{k}"
        if name in out:
            name = f"{name}_{k}"
        out[name] = int(k)
    return out


def _png_ready(image: np.ndarray, case: Case) -> np.ndarray:
    if case.meta.get("dtype") == "uint8" and float(image.max()) > 1.0:
        return image / 255.0
    if float(image.min()) < -1e-3 or float(image.max()) > 1.0 + 1e-3:
        raise DataError("image values are not in [0, 1]; PNG cannot hold them (use file_ending='.nii.gz')",
                        case.case_id)
    return image


def export_nnunet(source: str | Path | Sequence[Case], out_root: str | Path, *, dataset_id: int = 501,
                  name: str | None = None, info: DatasetInfo | None = None,
                  channel_names: dict[str, str] | None = None, file_ending: str = ".nii.gz",
                  overwrite: bool = False) -> Path:
    """Write ``source`` (a dataset folder or Cases) as ``out_root/DatasetXXX_Name`` in nnU-Net v2 raw format.

    Args:
        source: dataset folder (any layout segsynth reads; exported at native resolution) or Cases.
        out_root: nnU-Net's ``nnUNet_raw`` folder (or any folder).
        dataset_id: the 3-digit dataset id.
        name: dataset name (default: the source's).
        info: class names / modality when ``source`` is a list of Cases.
        channel_names: override ``channel_names`` (index as string -> name).
        file_ending: ".nii.gz" (default) or ".png" (2D only).
        overwrite: replace an existing dataset folder.

    Returns:
        the dataset folder.
    """
    if file_ending not in (".nii.gz", ".png"):
        raise ConfigError(f"file_ending must be '.nii.gz' or '.png', not {file_ending!r}")
    src = open_source(source, info)
    target = Path(out_root) / nnunet_folder_name(dataset_id, name or src.name)
    if target.exists() and not overwrite:
        raise DataError("dataset folder exists already; --overwrite replaces it (overwrite=True in Python)", target)
    n_train = n_test = 0
    in_channels = None
    used: set[str] = set()
    with atomic_dir(target) as tmp:
        for case in src:
            cid = unique_safe_id(case.case_id, used)
            if in_channels is None:
                in_channels = case.in_channels
            elif case.in_channels != in_channels:
                raise DataError(f"case has {case.in_channels} channels, earlier cases {in_channels}", case.case_id)
            if file_ending == ".png" and case.spatial_dims != 2:
                raise ConfigError("PNG export is for 2D data only")
            meta = file_meta(case)
            folder = "imagesTr" if case.mask is not None else "imagesTs"
            image = _png_ready(case.image, case) if file_ending == ".png" else case.image
            for c in range(case.in_channels):
                write_image(tmp / folder / f"{cid}_{c:04d}{file_ending}", image[c:c + 1], meta)
            if case.mask is not None:
                write_mask(tmp / "labelsTr" / f"{cid}{file_ending}", case.mask, meta)
                n_train += 1
            else:
                n_test += 1
        if n_train == 0:
            raise DataError("no labelled cases: nnU-Net needs labelsTr")
        dj: dict[str, Any] = {
            "channel_names": channel_names or default_channel_names(src.modality, int(in_channels or 1)),
            "labels": nnunet_labels(src.labels),
            "numTraining": n_train,
            "file_ending": file_ending,
            "name": name or src.name,
            "description": f"exported by segsynth from {src.name}",
        }
        if file_ending == ".png":
            dj["overwrite_image_reader_writer"] = "NaturalImage2DIO"
        for key in ("licence", "license", "reference", "citation", "source", "synthetic"):
            if key in src.extra:
                dj[key] = src.extra[key]
        if n_test:
            dj["numTest"] = n_test
        write_json(tmp / "dataset.json", dj)
        if "provenance_file" in src.extra:
            shutil.copyfile(src.extra["provenance_file"], tmp / "provenance.jsonl")
    return target
