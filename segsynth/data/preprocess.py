"""Preprocessing a user can reason about: intensity normalisation, 2D slices of 3D volumes, resizing, crop/pad.

The order ``load_dataset`` applies (``apply_spec``):

1. intensity normalisation of the whole image/volume (so slices of one volume share one scale);
2. 3D volumes kept in 3D: centre crop/pad to ``shape_3d`` when given;
3. 3D volumes with ``spatial_dims=2``: cut into 2D slices along ``slice_axis``, keeping every slice with
   foreground and a seeded fraction ``keep_empty_slices`` of the others;
4. 2D images (native or slices): resize to ``size`` (image bilinear with antialiasing, mask nearest, so
   the mask keeps exactly the class ids it had).

Normalisation (``normalise``):

* ``"auto"``: MRI and CT -> ``"zscore"``; photos and X-ray -> ``"unit"``; "other" -> ``"unit"`` for
  PNG/JPEG files and ``"zscore"`` for NIfTI.
* ``"zscore"``: per channel, clip to the 0.5-99.5 percentiles of the foreground (non-zero voxels), then
  subtract the foreground mean and divide by its standard deviation (nnU-Net style).
* ``"percentile"``: per channel, clip to the foreground 0.5-99.5 percentiles and scale that range to [0, 1].
* ``"unit"``: to [0, 1]: 8-bit files / 255; wider integer files by the bit depth in use (a 12-bit X-ray
  in a 16-bit PNG / 4095); float files already in [0, 1] unchanged, others min-max scaled.
* ``"none"``: unchanged (data already normalised, e.g. a dataset written by ``DatasetWriter``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from segsynth.data.case import Case
from segsynth.errors import ConfigError
from segsynth.utils.seed import derive_seed, numpy_rng

NORMALISATIONS = ("auto", "zscore", "percentile", "unit", "none")


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw files become working ``Case`` arrays.

    Attributes:
        spatial_dims: None = native (2D stays 2D, 3D stays 3D); 2 with 3D volumes = take 2D slices;
            3 with 2D data is an error.
        size: working size of 2D images (int = square; a tuple of 2). A 3-tuple resizes 3D volumes too.
            None keeps the native size.
        shape_3d: centre crop/pad 3D volumes to this shape (image padded with its minimum, mask with 0).
            None keeps the native shape.
        slice_axis: spatial axis the 2D slices are cut along (-1 = last spatial axis, z for NIfTI).
        keep_empty_slices: fraction of slices without foreground to keep (seeded choice per volume).
        normalise: "auto", "zscore", "percentile", "unit" or "none" (see the module docstring).
        percentiles: clipping percentiles for "zscore" and "percentile".
        seed: seed of the choice of empty slices.
    """

    spatial_dims: int | None = None
    size: tuple[int, ...] | int | None = 128
    shape_3d: tuple[int, ...] | None = None
    slice_axis: int = -1
    keep_empty_slices: float = 0.1
    normalise: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.spatial_dims not in (None, 2, 3):
            raise ConfigError(f"spatial_dims must be None, 2 or 3, not {self.spatial_dims!r}")
        if self.normalise not in NORMALISATIONS:
            raise ConfigError(f"normalise must be one of {', '.join(NORMALISATIONS)}, not {self.normalise!r}")
        if not 0.0 <= float(self.keep_empty_slices) <= 1.0:
            raise ConfigError(f"keep_empty_slices must be in [0, 1], not {self.keep_empty_slices}")
        if self.size is not None:
            sizes = (self.size,) if isinstance(self.size, int) else tuple(self.size)
            if len(sizes) not in (1, 2, 3) or any(int(s) < 1 for s in sizes):
                raise ConfigError(f"size must be a positive int or a tuple of 2 or 3, not {self.size!r}")
        if self.shape_3d is not None and (len(self.shape_3d) != 3 or any(int(s) < 1 for s in self.shape_3d)):
            raise ConfigError(f"shape_3d must be 3 positive ints, not {self.shape_3d!r}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, not {self.percentiles}")

    def size_for(self, spatial_dims: int) -> tuple[int, ...] | None:
        """The resize target for data of ``spatial_dims`` dimensions, or None for no resize."""
        if self.size is None:
            return None
        if isinstance(self.size, int):
            return (int(self.size),) * 2 if spatial_dims == 2 else None
        size = tuple(int(s) for s in self.size)
        return size if len(size) == spatial_dims else None

    def to_json(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "size": self.size, "shape_3d": self.shape_3d,
                "slice_axis": self.slice_axis, "keep_empty_slices": self.keep_empty_slices,
                "normalise": self.normalise, "percentiles": list(self.percentiles), "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreprocessSpec:
        """The spec ``to_json`` wrote (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ------------------------------------------------------------------------------------------ intensity


def resolve_normalisation(method: str, modality: str, file_format: str) -> str:
    """The concrete method "auto" stands for, given the modality and the file format."""
    if method not in NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {method!r}; use one of {', '.join(NORMALISATIONS)}")
    if method != "auto":
        return method
    if modality in ("mri", "ct"):
        return "zscore"
    if modality in ("photo", "xray"):
        return "unit"
    return "zscore" if file_format == "nifti" else "unit"


def _foreground(channel: np.ndarray) -> np.ndarray:
    fg = channel[channel != 0]
    return fg if fg.size >= max(10, channel.size // 100) else channel.ravel()


def normalise_intensity(image: np.ndarray, method: str = "auto", *, modality: str = "other",
                        file_format: str = "png", source_dtype: str | None = None,
                        percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Normalise a ``(C, *S)`` image channel by channel; returns float32 (see the module docstring).

    Args:
        image: the image as read (float32 holding the file's values).
        method: "auto", "zscore", "percentile", "unit" or "none".
        modality: picks the method when ``method="auto"``.
        file_format: "nifti", "png", "jpg" (for "auto" with modality "other").
        source_dtype: the file's dtype (``meta["dtype"]``), used by "unit".
        percentiles: clipping percentiles for "zscore" and "percentile".
    """
    method = resolve_normalisation(method, modality, file_format)
    image = np.asarray(image, dtype=np.float32)
    if method == "none":
        return image.copy()
    out = np.empty_like(image)
    lo_p, hi_p = percentiles
    for c in range(image.shape[0]):
        ch = image[c]
        if method == "unit":
            out[c] = _unit(ch, source_dtype)
            continue
        fg = _foreground(ch)
        lo, hi = np.percentile(fg, [lo_p, hi_p])
        clipped = np.clip(ch, lo, hi)
        if method == "zscore":
            fg_c = np.clip(fg, lo, hi)
            mean, std = float(fg_c.mean()), float(fg_c.std())
            out[c] = (clipped - mean) / max(std, 1e-8)
        else:  # percentile
            out[c] = (clipped - lo) / max(float(hi - lo), 1e-8)
    return out


def _unit(ch: np.ndarray, source_dtype: str | None) -> np.ndarray:
    dt = np.dtype(source_dtype) if source_dtype else None
    if dt is not None and dt == np.uint8:
        return ch / 255.0
    if dt is not None and np.issubdtype(dt, np.integer):
        vmax = float(ch.max()) if ch.size else 0.0
        if ch.min() >= 0:
            bits = max(8, math.ceil(math.log2(vmax + 1))) if vmax > 0 else 8
            return ch / float(2**bits - 1)
    lo, hi = float(ch.min()), float(ch.max())
    if lo >= 0.0 and hi <= 1.0:
        return ch.copy()
    return (ch - lo) / max(hi - lo, 1e-8)


# ------------------------------------------------------------------------------------------ geometry


def _as_size(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (int(size),) * ndim
    size = tuple(int(s) for s in size)
    if len(size) != ndim:
        raise ConfigError(f"size {size} does not match {ndim} spatial dimensions")
    return size


def resize_case(case: Case, size: int | Sequence[int]) -> Case:
    """Resize a case to ``size``: image bilinear/trilinear (antialiased in 2D), mask nearest.

    Meta gets ``original_shape`` (the spatial shape before the first resize) and ``resized_to``.
    """
    import torch
    import torch.nn.functional as F

    target = _as_size(size, case.spatial_dims)
    if tuple(case.spatial_shape) == target:
        return case
    meta = dict(case.meta)
    meta.setdefault("original_shape", list(case.spatial_shape))
    meta["resized_to"] = list(target)
    x = torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))[None]
    if case.spatial_dims == 2:
        downsampling = any(t < s for t, s in zip(target, case.spatial_shape))
        img = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=downsampling)
    elif case.spatial_dims == 3:
        img = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    else:
        raise ConfigError(f"resize supports 2D and 3D images, not {case.spatial_dims}D")
    image = img[0].numpy().astype(np.float32)
    mask = None
    if case.mask is not None:
        m = torch.from_numpy(np.ascontiguousarray(case.mask, dtype=np.int64))[None, None].float()
        mask = F.interpolate(m, size=target, mode="nearest-exact")[0, 0].round().long().numpy()
    return Case(case.case_id, image, mask, meta)


def resize_cases(cases: Sequence[Case], size: int | Sequence[int]) -> list[Case]:
    """``resize_case`` for many cases; cases of one shape (the slices of a volume) go in one batch."""
    import torch
    import torch.nn.functional as F

    out: list[Case | None] = [None] * len(cases)
    by_shape: dict[tuple, list[int]] = {}
    for i, c in enumerate(cases):
        key = (c.spatial_dims, c.in_channels, tuple(c.spatial_shape), c.mask is not None)
        by_shape.setdefault(key, []).append(i)
    for (sdims, _, shape, labelled), idx in by_shape.items():
        target = _as_size(size, sdims)
        if len(idx) == 1 or sdims != 2 or tuple(shape) == target:
            for i in idx:
                out[i] = resize_case(cases[i], target)
            continue
        x = torch.from_numpy(np.stack([np.asarray(cases[i].image, dtype=np.float32) for i in idx]))
        downsampling = any(t < s for t, s in zip(target, shape))
        imgs = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=downsampling).numpy()
        masks = None
        if labelled:
            m = torch.from_numpy(np.stack([cases[i].mask for i in idx]).astype(np.float32))[:, None]
            masks = F.interpolate(m, size=target, mode="nearest-exact")[:, 0].round().long().numpy()
        for j, i in enumerate(idx):
            meta = dict(cases[i].meta)
            meta.setdefault("original_shape", list(shape))
            meta["resized_to"] = list(target)
            out[i] = Case(cases[i].case_id, np.ascontiguousarray(imgs[j]),
                          None if masks is None else np.ascontiguousarray(masks[j]), meta)
    return [c for c in out if c is not None]


def _crop_pad_slices(shape: Sequence[int], target: Sequence[int]) -> tuple[list, list, list]:
    src, dst, pads = [], [], []
    for s, t in zip(shape, target):
        if s >= t:
            start = (s - t) // 2
            src.append(slice(start, start + t))
            dst.append(slice(0, t))
            pads.append((-start, -(s - t - start)))
        else:
            before = (t - s) // 2
            src.append(slice(0, s))
            dst.append(slice(before, before + s))
            pads.append((before, t - s - before))
    return src, dst, pads


def crop_or_pad(case: Case, shape: Sequence[int]) -> Case:
    """Centre crop and/or pad a case to ``shape`` (image padded with its per-channel minimum, mask with 0).

    Meta gets ``crop_pad``: the shape before and, per axis, (before, after) voxels added (negative =
    cropped), so a prediction can be mapped back.
    """
    target = tuple(int(s) for s in shape)
    if len(target) != case.spatial_dims:
        raise ConfigError(f"crop/pad shape {target} does not match a {case.spatial_dims}D case")
    if tuple(case.spatial_shape) == target:
        return case
    src, dst, pads = _crop_pad_slices(case.spatial_shape, target)
    c = case.in_channels
    fill = case.image.reshape(c, -1).min(axis=1).astype(np.float32)
    image = np.empty((c, *target), dtype=np.float32)
    image[...] = fill.reshape((c,) + (1,) * len(target))
    image[(slice(None), *dst)] = case.image[(slice(None), *src)]
    mask = None
    if case.mask is not None:
        mask = np.zeros(target, dtype=np.int64)
        mask[tuple(dst)] = case.mask[tuple(src)]
    meta = dict(case.meta)
    meta["crop_pad"] = {"from_shape": list(case.spatial_shape), "pads": [list(p) for p in pads]}
    return Case(case.case_id, image, mask, meta)


# ------------------------------------------------------------------------------------------ slicing


def to_slices(cases: Sequence[Case], axis: int = -1, keep_empty: float = 0.1, seed: int = 0) -> list[Case]:
    """Cut 3D cases into 2D slices along spatial ``axis``.

    Labelled volumes keep every slice with foreground plus ``round(keep_empty * n_empty)`` slices without
    it, chosen with a seed derived from ``(seed, volume id)`` (so the choice of one volume does not depend
    on the others). Unlabelled volumes keep every slice whose image is not constant.

    Slice ids are ``"<volume>_s012"``; meta keeps the volume's meta plus ``volume_id``, ``slice_index``,
    ``slice_axis`` and ``num_slices``. Splits group by ``volume_id``.
    """
    out: list[Case] = []
    for case in cases:
        if case.spatial_dims != 3:
            raise ConfigError(f"to_slices needs 3D cases; {case.case_id} is {case.spatial_dims}D")
        ax = axis % 3
        n = case.spatial_shape[ax]
        if case.mask is not None:
            has_fg = np.moveaxis(case.mask, ax, 0).reshape(n, -1).any(axis=1)
            empty = np.flatnonzero(~has_fg)
            n_keep = int(round(float(keep_empty) * len(empty)))
            rng = numpy_rng(derive_seed(seed, "slices", case.case_id))
            kept_empty = set(rng.choice(empty, size=n_keep, replace=False).tolist()) if n_keep else set()
            keep = [i for i in range(n) if has_fg[i] or i in kept_empty]
        else:
            flat = np.moveaxis(case.image, ax + 1, 1).reshape(case.in_channels, n, -1)
            keep = [i for i in range(n) if (flat[:, i].max(axis=1) > flat[:, i].min(axis=1)).any()]
        vol_id = case.meta.get("volume_id", case.case_id)
        width = max(3, len(str(n - 1)))
        for i in keep:
            image = np.ascontiguousarray(np.take(case.image, i, axis=ax + 1))
            mask = None if case.mask is None else np.ascontiguousarray(np.take(case.mask, i, axis=ax))
            meta = dict(case.meta)
            meta.update(volume_id=vol_id, slice_index=int(i), slice_axis=int(ax), num_slices=int(n))
            out.append(Case(f"{case.case_id}_s{i:0{width}d}", image, mask, meta))
    return out


# ------------------------------------------------------------------------------------------ pipeline


def apply_spec(case: Case, spec: PreprocessSpec, *, modality: str, file_format: str,
               normalise: str | None = None) -> list[Case]:
    """Run the whole pipeline on one raw case (image as read, mask with contiguous ids).

    Returns one case, or the kept slices when ``spec.spatial_dims == 2`` and the case is 3D.

    Args:
        normalise: overrides ``spec.normalise`` (the loader passes "none" for already normalised data).
    """
    method = normalise or spec.normalise
    meta = dict(case.meta)
    resolved = resolve_normalisation(method, modality, file_format)
    meta["normalise"] = resolved
    image = normalise_intensity(case.image, resolved, modality=modality, file_format=file_format,
                                source_dtype=meta.get("dtype"), percentiles=spec.percentiles)
    case = replace(case, image=image, meta=meta)
    if case.spatial_dims == 3 and spec.spatial_dims == 2:
        if spec.shape_3d is not None:
            case = crop_or_pad(case, spec.shape_3d)
        cases = to_slices([case], spec.slice_axis, spec.keep_empty_slices, spec.seed)
    else:
        if case.spatial_dims == 3 and spec.shape_3d is not None:
            case = crop_or_pad(case, spec.shape_3d)
        cases = [case]
    target = spec.size_for(cases[0].spatial_dims) if cases else None
    return resize_cases(cases, target) if target is not None else cases
