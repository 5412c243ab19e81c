"""Segment image files with a saved model and write the masks in the input's format and geometry.

The image goes through the same preprocessing the model was trained with (from model.json); the
prediction is mapped back: resized to the original 2D size, un-cropped/un-padded in 3D, slices restacked
into the volume for a 2D model applied to 3D data. Class ids are written back as the dataset's raw mask
values (e.g. 255 for a 0/255 binary mask), NIfTI keeps the input's affine. The output folder appears
whole or not at all.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.dataset import read_pair, value_map_of
from segsynth.data.io import write_mask
from segsynth.data.layouts import Layout, PairRecord, find_layout
from segsynth.data.preprocess import PreprocessSpec, apply_spec
from segsynth.errors import DataError
from segsynth.segment.inference import predict
from segsynth.segment.model_io import check_input_fits, load_segmenter
from segsynth.utils.device import resolve_device
from segsynth.utils.files import atomic_dir
from segsynth.utils.progress import progress_iter


def _resize_labels(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(mask.shape) == tuple(shape):
        return mask
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(m, size=tuple(shape), mode="nearest-exact")[0, 0].round().long().numpy()


def _uncrop(mask: np.ndarray, crop_pad: dict) -> np.ndarray:
    """Undo crop_or_pad: pads[i] = (before, after) voxels added (negative = cropped)."""
    out = np.zeros(crop_pad["from_shape"], dtype=mask.dtype)
    src, dst = [], []
    for (before, after), s in zip(crop_pad["pads"], crop_pad["from_shape"]):
        if before >= 0:  # padded: take the middle of the prediction
            src.append(slice(before, before + s))
            dst.append(slice(0, s))
        else:  # cropped: place the prediction back in the middle
            dst.append(slice(-before, s + after))
            src.append(slice(0, s + before + after))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def predict_case(model: torch.nn.Module, raw: Case, spec: PreprocessSpec, modality: str, num_classes: int,
                 patch_size=None, device=None) -> np.ndarray:
    """Label map of one raw case (as read from disk) in its original geometry."""
    pspec = replace(spec, keep_empty_slices=1.0)  # every slice of a volume is predicted
    name = raw.meta.get("image_path") or raw.meta.get("path") or raw.case_id  # named if too small for the model
    cases = apply_spec(raw, pspec, modality=modality, file_format=raw.meta["format"])
    source_shape = tuple(raw.image.shape[1:])
    if raw.spatial_dims == 3 and cases[0].spatial_dims == 2:
        axis = cases[0].meta["slice_axis"]
        vol_shape = tuple(cases[0].meta.get("crop_pad", {}).get("from_shape", source_shape))
        inner = cases[0].meta.get("crop_pad")
        shape_after_crop = source_shape if inner is None else tuple(spec.shape_3d)
        out = np.zeros(shape_after_crop, dtype=np.int64)
        slice_shape = tuple(s for i, s in enumerate(shape_after_crop) if i != axis)
        for c in cases:
            pred = _resize_labels(predict(model, c.image, num_classes, device=device, name=name), slice_shape)
            idx = [slice(None)] * 3
            idx[axis] = c.meta["slice_index"]
            out[tuple(idx)] = pred
        return _uncrop(out, inner) if inner else out.reshape(vol_shape)
    case = cases[0]
    pred = predict(model, case.image, num_classes, patch_size=patch_size, device=device, name=name)
    if "crop_pad" in case.meta:
        pred = _uncrop(pred, case.meta["crop_pad"])
    return _resize_labels(pred, source_shape)


def predict_folder(model_dir: str | Path, input_path: str | Path, out: str | Path, *, device: str = "auto",
                   progress: bool = True) -> list[Path]:
    """Predict every image of a file or folder; returns the written mask paths."""
    dev = resolve_device(device)
    model, config = load_segmenter(model_dir, dev)
    spec = PreprocessSpec.from_json(config["spec"])
    info = DatasetInfo.from_json(config["info"])
    num_classes = info.num_classes
    id_to_raw = {cid: raw for raw, cid in value_map_of(info).items()}  # masks are written in the stored values
    input_path = Path(input_path)
    if not input_path.exists():
        raise DataError("input does not exist", input_path)
    if input_path.is_file():
        layout = Layout(kind="images_only", root=input_path.parent, name=input_path.parent.name,
                        pairs=[PairRecord(input_path.name.split(".")[0], (input_path,))], value_map={},
                        labels={0: "background"}, modality=info.modality)
    else:
        layout = find_layout(input_path, unlabelled_ok=True, scan_values=False)
    records, modality = layout.pairs, info.modality
    written = []
    with atomic_dir(out) as tmp:
        for rec in progress_iter(records, "predict", progress):
            raw = read_pair(layout, rec, with_mask=False)
            check_input_fits(config, raw.spatial_dims, raw.in_channels, rec.images[0], model_dir)
            pred = predict_case(model, raw, spec, modality, num_classes, patch_size=config.get("patch_size"),
                                device=dev)
            lut = np.array([id_to_raw.get(k, k) for k in range(num_classes)], dtype=np.int64)
            name = rec.images[0].name
            if raw.meta["format"] != "nifti":
                name = name.rsplit(".", 1)[0] + ".png"
            elif "_0000" in name:
                name = name.replace("_0000", "")
            write_mask(tmp / name, lut[pred], raw.meta)
            written.append(Path(out) / name)
    return written
