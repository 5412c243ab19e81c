"""GenSeg's mask augmentation: new plausible label maps from the few real ones, 2D and 3D.

GenSeg (Zhang et al. 2024) feeds augmented masks to its mask-to-image generator, so each real mask yields
many new (mask, synthetic image) pairs. Its public 2D code draws, in random order, a left-right flip,
crop-and-pad of 0-10 %, scale 0.8-1.2, translation of ±10 %, rotation of ±15 ° and shear of ±8 °; the issue
adds elastic deformation. Here all of them are composed into *one* sampling grid (built on
``segsynth.data.transforms.RandomSpatial``), so a mask is resampled once, and labels are warped by their
one-hot encoding + bilinear + argmax (``warp_labels``): the result holds only class ids of the input, with
no interpolation artefacts (no spurious class 1 between classes 0 and 2), for binary and multi-class masks.

As everywhere in segsynth, drawing the parameters is separate from applying them::

    aug = MaskAugment()
    params = aug.draw(mask.shape, generator)      # JSON-serialisable: the record of this draw
    new_mask = aug.apply_mask(mask, params, num_classes)

``apply(image, mask, params, num_classes)`` has the signature of the other transforms, so a ``MaskAugment``
can also augment real pairs (image bilinear, mask as above), e.g. inside a ``CaseSource``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from segsynth.data.transforms import RandomSpatial, warp_labels
from segsynth.errors import ConfigError

Params = dict[str, Any]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g).item())


@dataclass
class MaskAugment:
    """Random flip, crop/pad, scale, translation, rotation, shear and elastic deformation of label maps.

    Args:
        rotate_deg: maximum absolute rotation in degrees (about each axis in 3D).
        scale: (min, max) isotropic zoom.
        translate: maximum shift as a fraction of the size, per axis.
        shear: maximum absolute shear factor (0.14 = tan 8°).
        flip_axes: spatial axes that may be flipped (each with ``flip_prob``); None = the last axis only
            (left-right, as GenSeg). Use ``()`` when labels carry sidedness (e.g. "left lung").
        flip_prob: probability of each flip.
        crop_pad: maximum crop (negative) or pad (positive) per side as a fraction of the size; the cropped
            or padded field of view is resized back to the original size (imgaug's CropAndPad).
        elastic_alpha: std of the smooth elastic displacement in normalised units (2 = full size); 0 = off.
        elastic_prob: probability of adding the elastic deformation to a draw.
        elastic_points: control points per axis of the elastic field.
        p: probability of augmenting at all (else the identity).
    """

    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.1
    shear: float = 0.14
    flip_axes: tuple[int, ...] | None = None
    flip_prob: float = 0.5
    crop_pad: float = 0.1
    elastic_alpha: float = 0.02
    elastic_prob: float = 0.5
    elastic_points: int = 5
    p: float = 1.0

    def __post_init__(self) -> None:
        if self.rotate_deg < 0 or self.translate < 0 or self.shear < 0 or self.crop_pad < 0:
            raise ConfigError("mask augmentation ranges (rotate_deg, translate, shear, crop_pad) must be >= 0")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"mask augmentation scale must be 0 < min <= max, got {self.scale}")
        if self.crop_pad >= 0.5:
            raise ConfigError(f"crop_pad must be below 0.5 (a fraction per side), got {self.crop_pad}")
        for name in ("flip_prob", "elastic_prob", "p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        self.scale = (float(lo), float(hi))
        if self.flip_axes is not None:
            self.flip_axes = tuple(int(a) for a in self.flip_axes)

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> MaskAugment:
        """Build from a JSON-like dict (e.g. method options); unknown keys are a ConfigError."""
        options = dict(options or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown mask augmentation options {unknown}; known: {sorted(known)}")
        if "scale" in options:
            options["scale"] = tuple(options["scale"])
        if options.get("flip_axes") is not None:
            options["flip_axes"] = tuple(options["flip_axes"])
        return cls(**options)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"] = list(self.scale)
        d["flip_axes"] = None if self.flip_axes is None else list(self.flip_axes)
        return d

    def _spatial_for(self, spatial_dims: int, elastic: bool) -> RandomSpatial:
        axes = (spatial_dims - 1,) if self.flip_axes is None else self.flip_axes
        if any(a < 0 or a >= spatial_dims for a in axes):
            raise ConfigError(f"flip_axes {axes} do not exist in {spatial_dims}D")
        return RandomSpatial(rotate_deg=self.rotate_deg, scale=self.scale, translate=self.translate,
                             shear=self.shear, flip_axes=axes, flip_prob=self.flip_prob,
                             elastic_alpha=self.elastic_alpha if elastic else 0.0,
                             elastic_points=self.elastic_points, p=1.0)

    # ------------------------------------------------------------------------------------------ draw

    def draw(self, spatial_shape: Sequence[int], generator: torch.Generator) -> Params:
        """Draw the parameters of one augmentation (a JSON-serialisable dict)."""
        nd = len(spatial_shape)
        if nd not in (2, 3):
            raise ConfigError(f"mask augmentation works on 2D or 3D masks, got shape {tuple(spatial_shape)}")
        if torch.rand((), generator=generator).item() >= self.p:
            return {"identity": True}
        elastic = self.elastic_alpha > 0 and torch.rand((), generator=generator).item() < self.elastic_prob
        spatial = self._spatial_for(nd, elastic).draw(spatial_shape, generator)
        crop_pad = [[_uniform(generator, -self.crop_pad, self.crop_pad) for _ in range(2)] for _ in range(nd)]
        return {"identity": False, "spatial": spatial, "crop_pad": crop_pad}

    # ------------------------------------------------------------------------------------------ apply

    def grid(self, params: Params, spatial_shape: Sequence[int], device: torch.device | str = "cpu"
             ) -> torch.Tensor | None:
        """The sampling grid (1, *S, nd) of one draw, in ``grid_sample`` (x, y[, z]) order; None = identity.

        Crop/pad is applied first (field of view [-1 - 2 p_lo, 1 + 2 p_hi] per axis resized to the output),
        then the affine + elastic map, all folded into this one grid.
        """
        if params.get("identity", False):
            return None
        nd = len(spatial_shape)
        device = torch.device(device)
        spatial = self._spatial_for(nd, "elastic" in params["spatial"])
        grid = spatial.grid(params["spatial"], spatial_shape, device)
        if grid is None:
            theta = torch.zeros(1, nd, nd + 1, device=device)
            theta[0, :, :nd] = torch.eye(nd, device=device)
            grid = F.affine_grid(theta, [1, 1, *spatial_shape], align_corners=False)
        lo = torch.tensor([-1.0 - 2.0 * p[0] for p in params["crop_pad"]], device=device)
        hi = torch.tensor([1.0 + 2.0 * p[1] for p in params["crop_pad"]], device=device)
        centre, half = ((lo + hi) / 2).flip(0), ((hi - lo) / 2).flip(0)  # axis order -> (x, y, z) order
        return centre + half * grid

    def apply_mask(self, mask: torch.Tensor, params: Params, num_classes: int | None = None) -> torch.Tensor:
        """Warp one label map (*S) long with a drawn ``params``; returns (*S) long with the input's ids only."""
        grid = self.grid(params, mask.shape, mask.device)
        if grid is None:
            return mask.long()
        return warp_labels(mask.long(), grid, num_classes)

    def apply(self, image: torch.Tensor | None, mask: torch.Tensor | None, params: Params,
              num_classes: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Warp an image (C, *S) bilinearly and/or its mask (*S) with the same draw."""
        ref = image if image is not None else mask
        if ref is None:
            return None, None
        shape = ref.shape[1:] if image is not None else ref.shape
        grid = self.grid(params, shape, ref.device)
        if grid is None:
            return image, mask
        if image is not None:
            image = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border",
                                  align_corners=False)[0]
        if mask is not None:
            mask = warp_labels(mask.long(), grid, num_classes)
        return image, mask

    def __call__(self, mask: torch.Tensor, generator: torch.Generator, num_classes: int | None = None
                 ) -> tuple[torch.Tensor, Params]:
        """Draw and apply in one go; returns (new mask, params)."""
        params = self.draw(mask.shape, generator)
        return self.apply_mask(mask, params, num_classes), params


def augment_masks(masks: Sequence[torch.Tensor], augment: MaskAugment, generator: torch.Generator,
                  num_classes: int | None = None) -> tuple[list[torch.Tensor], list[Params]]:
    """Augment each mask of a list with its own draw; returns the new masks and the draws."""
    out, draws = [], []
    for m in masks:
        new, params = augment(m, generator, num_classes)
        out.append(new)
        draws.append(params)
    return out, draws


def shear_from_degrees(degrees: float) -> float:
    """Shear factor of a shear angle (imgaug's ``shear=(-8, 8)`` is ``shear_from_degrees(8)`` ≈ 0.14)."""
    return math.tan(math.radians(degrees))
