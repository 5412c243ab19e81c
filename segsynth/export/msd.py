"""Export to the Medical Segmentation Decathlon (MSD) format.

Layout written (``out_dir/``)::

    dataset.json   name, description, reference, licence, release, tensorImageSize, modality {"0": ...},
                   labels {"0": "background", ...}, numTraining, numTest,
                   training [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], test [...]
    imagesTr/<case>.nii.gz   all channels in one file (channels last, 4D for multi-channel 3D data)
    labelsTr/<case>.nii.gz
    imagesTs/<case>.nii.gz   cases without a mask
    provenance.jsonl         copied when the source is a segsynth synthetic dataset
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.io import write_image, write_mask
from segsynth.errors import DataError
from segsynth.export import file_meta, open_source, unique_safe_id
from segsynth.utils.files import atomic_dir, write_json

_MODALITY_NAME = {"ct": "CT", "mri": "MRI", "xray": "X-ray", "photo": "RGB"}


def export_msd(source: str | Path | Sequence[Case], out_dir: str | Path, *, name: str | None = None,
               info: DatasetInfo | None = None, modality_names: dict[str, str] | None = None,
               overwrite: bool = False) -> Path:
    """Write ``source`` (a dataset folder or Cases) as an MSD-style dataset in ``out_dir``.

    Args:
        source: dataset folder (exported at native resolution) or Cases.
        out_dir: the dataset folder to create (e.g. ``Task501_Synthetic``).
        name: dataset name (default: the source's).
        info: class names / modality when ``source`` is a list of Cases.
        modality_names: override the ``modality`` entry (channel index as string -> name).
        overwrite: replace an existing folder.
    """
    src = open_source(source, info)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError("output folder exists already; --overwrite replaces it (overwrite=True in Python)", out_dir)
    training: list[dict[str, str]] = []
    test: list[str] = []
    in_channels = spatial_dims = None
    used: set[str] = set()
    with atomic_dir(out_dir) as tmp:
        for case in src:
            cid = unique_safe_id(case.case_id, used)
            if in_channels is None:
                in_channels, spatial_dims = case.in_channels, case.spatial_dims
            elif case.in_channels != in_channels:
                raise DataError(f"case has {case.in_channels} channels, earlier cases {in_channels}", case.case_id)
            meta = file_meta(case)
            if case.mask is not None:
                write_image(tmp / "imagesTr" / f"{cid}.nii.gz", case.image, meta)
                write_mask(tmp / "labelsTr" / f"{cid}.nii.gz", case.mask, meta)
                training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
            else:
                write_image(tmp / "imagesTs" / f"{cid}.nii.gz", case.image, meta)
                test.append(f"./imagesTs/{cid}.nii.gz")
        if not training:
            raise DataError("no labelled cases to export")
        base_mod = _MODALITY_NAME.get(src.modality, "image")
        modality = modality_names or {str(i): base_mod if in_channels == 1 else f"{base_mod}{i}"
                                      for i in range(int(in_channels or 1))}
        dims = int(spatial_dims or 3) + (1 if (in_channels or 1) > 1 else 0)
        dj: dict[str, Any] = {
            "name": name or src.name,
            "description": f"exported by segsynth from {src.name}",
            "reference": src.extra.get("reference", src.extra.get("source", "")),
            "licence": src.extra.get("licence", src.extra.get("license", "")),
            "release": "segsynth export",
            "tensorImageSize": f"{dims}D",
            "modality": modality,
            "labels": {str(k): ("background" if k == 0 else v) for k, v in sorted(src.labels.items())},
            "numTraining": len(training),
            "numTest": len(test),
            "training": training,
            "test": test,
        }
        if "synthetic" in src.extra:
            dj["synthetic"] = src.extra["synthetic"]
        write_json(tmp / "dataset.json", dj)
        if "provenance_file" in src.extra:
            shutil.copyfile(src.extra["provenance_file"], tmp / "provenance.jsonl")
    return out_dir
