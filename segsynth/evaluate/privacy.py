"""Memorisation audit: does a synthetic set contain (near-)copies of training images?

For every synthetic image the audit finds its nearest training image twice:

* **pixel space**: the highest Pearson correlation with any training image over small translations
  (``max_shift`` voxels along every axis, compared on the central region that every shift covers), so a
  copy moved by a voxel or two, or with its intensities rescaled or lightly noised, still scores ~1;
* **feature space**: the smallest Euclidean distance between standardised encoder features
  (``segsynth.evaluate.quality``; by default the frozen random conv encoder), which is insensitive to small
  shifts and catches copies that pixel correlation rates lower (e.g. noise).

Thresholds are calibrated on real images that are *not* training images (``reference``: validation or
test images of other subjects); without them, each training image is compared with the training images of
other volumes (leave-one-volume-out). A synthetic image is flagged as a near-copy when

* its pixel similarity ``>= pixel_threshold`` = clip(99th percentile of the reference similarities,
  ``pixel_floor``, ``pixel_cap``): closer to a training image than real unseen images ever are (and
  at least ``pixel_floor``); or
* its feature distance ``<= feature_threshold`` = ``feature_ratio`` x the 1st percentile of the reference
  nearest-neighbour distances.

The verdict is ``"pass"`` when nothing is flagged and ``"fail"`` otherwise, with the flagged images listed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case
from segsynth.errors import DataError
from segsynth.evaluate.quality import as_image_tensor, default_encoder, extract_features, standardise


@dataclass
class AuditResult:
    """Per-synthetic-image nearest neighbours, the thresholds used, and the verdict."""

    rows: list[dict[str, Any]]
    pixel_threshold: float
    feature_threshold: float
    reference: str
    verdict: str
    flagged: list[str] = field(default_factory=list)

    @property
    def n_flagged(self) -> int:
        return len(self.flagged)

    def summary(self) -> dict[str, Any]:
        px = [r["pixel_similarity"] for r in self.rows]
        fd = [r["feature_distance"] for r in self.rows]
        return {"verdict": self.verdict, "n_synthetic": len(self.rows), "n_flagged": self.n_flagged,
                "flagged": self.flagged, "pixel_threshold": self.pixel_threshold,
                "feature_threshold": self.feature_threshold, "reference": self.reference,
                "max_pixel_similarity": float(np.max(px)) if px else None,
                "median_pixel_similarity": float(np.median(px)) if px else None,
                "min_feature_distance": float(np.min(fd)) if fd else None}

    def format(self) -> str:
        s = self.summary()
        lines = [f"memorisation audit: {s['verdict'].upper()} - {s['n_flagged']} of {s['n_synthetic']} synthetic "
                 f"images are near-copies of training images",
                 f"  thresholds: pixel correlation >= {self.pixel_threshold:.4f}, feature distance <= "
                 f"{self.feature_threshold:.4f} (calibrated on {self.reference})"]
        for r in self.rows:
            if r["flagged"]:
                lines.append(f"  {r['synthetic_id']}: {r['reason']}; nearest {r['nearest_pixel_id']} "
                             f"(corr {r['pixel_similarity']:.4f}, shift {r['shift']}), feature nearest "
                             f"{r['nearest_feature_id']} (distance {r['feature_distance']:.4f})")
        return "\n".join(lines)


def _ids(images: Sequence[Any], prefix: str) -> list[str]:
    return [c.case_id if isinstance(c, Case) else f"{prefix}{i}" for i, c in enumerate(images)]


def _crop(x: torch.Tensor, shift: Sequence[int], m: int) -> torch.Tensor:
    sl = [slice(None), slice(None)]
    for s, size in zip(shift, x.shape[2:]):
        sl.append(slice(m + s, size - m + s))
    return x[tuple(sl)]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Flatten, centre and L2-normalise each image, so a dot product is a Pearson correlation."""
    f = x.flatten(1).double()
    f = f - f.mean(1, keepdim=True)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pixel_nearest(query: torch.Tensor, bank: torch.Tensor, max_shift: int = 2,
                  exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
    """Highest correlation of each query image with any bank image over translations up to ``max_shift``.

    Args:
        query: (Nq, C, *S); bank: (Nb, C, *S) of the same shape.
        exclude: (Nq, Nb) bool, pairs not to consider (e.g. an image with itself).

    Returns:
        (similarity (Nq,), index of the nearest bank image (Nq,), the shift of the best match per query).
    """
    m = int(max_shift)
    if any(s <= 2 * m for s in query.shape[2:]):
        raise DataError(f"images of size {tuple(query.shape[2:])} are too small for max_shift={m}")
    b = _unit_rows(_crop(bank, [0] * (bank.ndim - 2), m))
    best = torch.full((len(query),), -2.0, dtype=torch.double)
    arg = torch.zeros(len(query), dtype=torch.long)
    shifts: list[tuple[int, ...]] = [(0,) * (query.ndim - 2)] * len(query)
    for shift in itertools.product(range(-m, m + 1), repeat=query.ndim - 2):
        q = _unit_rows(_crop(query, shift, m))
        sim = q @ b.t()
        if exclude is not None:
            sim = sim.masked_fill(exclude, -2.0)
        v, i = sim.max(1)
        better = v > best
        best = torch.where(better, v, best)
        arg = torch.where(better, i, arg)
        for k in torch.nonzero(better).flatten().tolist():
            shifts[k] = tuple(int(s) for s in shift)
    return best.float(), arg, shifts


def _volumes(images: Sequence[Any]) -> list[str]:
    return [str(c.meta.get("volume_id", c.case_id)) if isinstance(c, Case) else str(i) for i, c in enumerate(images)]


def memorisation_audit(synthetic: Sequence[Case] | Sequence[np.ndarray], training: Sequence[Case] | Sequence[np.ndarray],
                       *, reference: Sequence[Case] | Sequence[np.ndarray] | None = None,
                       encoder: torch.nn.Module | None = None, max_shift: int = 2, pixel_floor: float = 0.95,
                       pixel_cap: float = 0.995, feature_ratio: float = 0.5, seed: int = 0,
                       device: torch.device | str = "cpu") -> AuditResult:
    """Flag synthetic images that are near-copies of training images (see the module docstring).

    Args:
        synthetic: the synthetic images (Cases or arrays (C, *S)).
        training: the generator's training images.
        reference: real images the generator never saw (calibration); None = leave-one-volume-out.
        encoder: feature network (default: frozen random conv encoder, ``seed``).
        max_shift: translations (voxels, each axis) searched in pixel space.
        pixel_floor, pixel_cap: bounds of the pixel correlation threshold.
        feature_ratio: feature threshold as a fraction of the reference's 1st-percentile NN distance.
    """
    xs, xt = as_image_tensor(synthetic), as_image_tensor(training)
    if xs.shape[1:] != xt.shape[1:]:
        raise DataError(f"synthetic images are {tuple(xs.shape[1:])}, training images {tuple(xt.shape[1:])}")
    syn_ids, train_ids = _ids(synthetic, "synthetic"), _ids(training, "train")
    enc = encoder or default_encoder(xt, seed)
    ft = extract_features(xt, enc, device=device)
    fs = standardise(extract_features(xs, enc, device=device), ft)
    ft_z = standardise(ft, ft)

    # calibration on images the generator did not see
    if reference is not None and len(reference):
        xr = as_image_tensor(reference)
        ref_px, _, _ = pixel_nearest(xr, xt, max_shift)
        fr = standardise(extract_features(xr, enc, device=device), ft)
        ref_fd = torch.cdist(fr.double(), ft_z.double()).min(1).values
        ref_name = f"{len(xr)} held-out real images"
    else:
        vols = _volumes(training)
        same = torch.tensor([[a == b for b in vols] for a in vols])
        if bool(same.all()):
            ref_px = torch.empty(0)
            ref_fd = torch.empty(0)
            ref_name = "fixed bounds only (one training volume, no reference images)"
        else:
            ref_px, _, _ = pixel_nearest(xt, xt, max_shift, exclude=same)
            d = torch.cdist(ft_z.double(), ft_z.double()).masked_fill(same, float("inf"))
            ref_fd = d.min(1).values
            keep = torch.isfinite(ref_fd)
            ref_px, ref_fd = ref_px[keep], ref_fd[keep]
            ref_name = "training images of other volumes (leave-one-volume-out)"
    if len(ref_px):
        pixel_threshold = float(np.clip(np.quantile(ref_px.numpy(), 0.99), pixel_floor, pixel_cap))
        feature_threshold = float(feature_ratio * np.quantile(ref_fd.numpy(), 0.01))
    else:
        pixel_threshold = float(pixel_floor)
        feature_threshold = 0.0

    px, px_arg, shifts = pixel_nearest(xs, xt, max_shift)
    fd_all = torch.cdist(fs.double(), ft_z.double())
    fd, fd_arg = fd_all.min(1)
    rows, flagged = [], []
    for i in range(len(xs)):
        reasons = []
        if float(px[i]) >= pixel_threshold:
            reasons.append("pixel")
        if float(fd[i]) <= feature_threshold:
            reasons.append("feature")
        row = {"synthetic_id": syn_ids[i], "nearest_pixel_id": train_ids[int(px_arg[i])],
               "pixel_similarity": float(px[i]), "shift": list(shifts[i]),
               "nearest_feature_id": train_ids[int(fd_arg[i])], "feature_distance": float(fd[i]),
               "flagged": bool(reasons), "reason": "+".join(reasons) if reasons else ""}
        rows.append(row)
        if reasons:
            flagged.append(syn_ids[i])
    return AuditResult(rows=rows, pixel_threshold=pixel_threshold, feature_threshold=feature_threshold,
                       reference=ref_name, verdict="fail" if flagged else "pass", flagged=flagged)
