"""Classical augmentation for image + mask pairs, 2D and 3D, on torch tensors.

Every random transform separates *drawing* its parameters from *applying* them and returns what it drew
(TorchIO's RandomNoise -> Noise), so any augmented pair can be reproduced from its record:

    aug = classical_augmentation("combined", spatial_dims=2)
    params = aug.draw(image.shape[1:], generator)     # a JSON-serialisable dict
    image2, mask2 = aug.apply(image, mask, params)

Masks are warped by resampling their one-hot encoding bilinearly and taking the argmax, so the result only
contains label ids present in the input (no interpolation artefacts) and boundaries stay smooth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from segsynth.errors import ConfigError
from segsynth.utils.labels import class_argmax

Params = dict[str, Any]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g).item())


@dataclass
class RandomSpatial:
    """Random affine (rotation, scale, translation, shear, flips) + optional elastic deformation.

    Args:
        rotate_deg: maximum absolute rotation (degrees), about each axis in 3D.
        scale: (min, max) isotropic zoom factor.
        translate: maximum shift as a fraction of the size, per axis.
        shear: maximum absolute shear factor (off-diagonal terms).
        flip_axes: spatial axes (0-based) that may be flipped, each with probability ``flip_prob``.
        elastic_alpha: std of the elastic displacement in normalised units (2 = full size); 0 = off.
        elastic_points: control points per axis of the smooth displacement field.
        p: probability of applying any spatial change at all.
    """

    rotate_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    shear: float = 0.0
    flip_axes: tuple[int, ...] = ()
    flip_prob: float = 0.5
    elastic_alpha: float = 0.0
    elastic_points: int = 5
    p: float = 1.0

    def draw(self, spatial_shape: Sequence[int], generator: torch.Generator) -> Params:
        nd = len(spatial_shape)
        if torch.rand((), generator=generator).item() >= self.p:
            return {"identity": True}
        n_rot = 1 if nd == 2 else 3
        params: Params = {
            "identity": False,
            "rotate_deg": [_uniform(generator, -self.rotate_deg, self.rotate_deg) for _ in range(n_rot)],
            "scale": _uniform(generator, *self.scale),
            "translate": [_uniform(generator, -self.translate, self.translate) for _ in range(nd)],
            "shear": [_uniform(generator, -self.shear, self.shear) for _ in range(nd * (nd - 1))],
            "flip": [a for a in self.flip_axes if torch.rand((), generator=generator).item() < self.flip_prob],
        }
        if self.elastic_alpha > 0:
            coarse = torch.randn((nd,) + (self.elastic_points,) * nd, generator=generator) * self.elastic_alpha
            params["elastic"] = coarse.tolist()
        return params

    def grid(self, params: Params, spatial_shape: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """Sampling grid (1, *S, nd) in grid_sample's (x, y[, z]) order, or None for the identity."""
        if params.get("identity", False):
            return None
        nd = len(spatial_shape)
        A = _affine_matrix(params, spatial_shape)  # maps output coords -> input coords, in voxel-scaled units
        theta = torch.zeros(1, nd, nd + 1)
        # grid_sample works in (x, y, z) = reversed axis order
        rev = list(reversed(range(nd)))
        theta[0, :, :nd] = A[:nd, :nd][rev][:, rev]
        theta[0, :, nd] = A[:nd, nd][rev]
        grid = F.affine_grid(theta.to(device), [1, 1, *spatial_shape], align_corners=False)
        if "elastic" in params:
            coarse = torch.tensor(params["elastic"], dtype=torch.float32, device=device)[None]
            mode = "bicubic" if nd == 2 else "trilinear"
            disp = F.interpolate(coarse, size=tuple(spatial_shape), mode=mode, align_corners=True)[0]
            disp = disp.flip(0).movedim(0, -1)  # axis order -> (x, y, z) order, channel last
            grid = grid + disp[None]
        return grid

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, params: Params,
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        grid = self.grid(params, image.shape[1:], image.device)
        if grid is None:
            return image, mask
        out = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[0]
        return out, (None if mask is None else warp_labels(mask, grid, num_classes))


def warp_labels(mask: torch.Tensor, grid: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Warp an integer label map with a sampling grid: one-hot, bilinear, argmax (outside -> background)."""
    k = int(num_classes if num_classes is not None else int(mask.max().item()) + 1)
    k = max(k, 2)
    onehot = F.one_hot(mask.long(), k).movedim(-1, 0)[None].float()
    onehot[:, 0] += 1e-6  # ties (and the zero padding outside the image) resolve to background
    warped = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return class_argmax(warped[0], 0)


def _affine_matrix(params: Params, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Homogeneous (nd+1)x(nd+1) matrix in normalised coords that keeps angles right for non-square sizes."""
    nd = len(spatial_shape)
    size = torch.tensor([float(s) for s in spatial_shape])
    S = torch.diag(size / size.max())  # normalised [-1, 1] coords -> isotropic coords
    R = torch.eye(nd)
    angles = [math.radians(a) for a in params["rotate_deg"]]
    if nd == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        R = torch.tensor([[c, -s], [s, c]])
    else:
        for axis, a in enumerate(angles):
            c, s = math.cos(a), math.sin(a)
            i, j = [d for d in range(3) if d != axis]
            Ra = torch.eye(3)
            Ra[i, i], Ra[i, j], Ra[j, i], Ra[j, j] = c, -s, s, c
            R = Ra @ R
    Sh = torch.eye(nd)
    k = 0
    for i in range(nd):
        for j in range(nd):
            if i != j:
                Sh[i, j] = params["shear"][k]
                k += 1
    F_ = torch.eye(nd)
    for a in params["flip"]:
        F_[a, a] = -1.0
    # inverse zoom: sampling from a smaller region enlarges the content
    M = torch.linalg.inv(S) @ (R @ Sh / params["scale"]) @ S @ F_
    H = torch.eye(nd + 1)
    H[:nd, :nd] = M
    H[:nd, nd] = torch.tensor(params["translate"]) * 2.0
    return H


@dataclass
class RandomIntensity:
    """Random gamma, contrast/brightness, Gaussian noise and blur on the image only (masks untouched).

    Works on normalised images of any range: gamma is applied on the image min-max rescaled to [0, 1]
    and mapped back.
    """

    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    noise_std: float = 0.0
    p: float = 1.0

    def draw(self, spatial_shape: Sequence[int], generator: torch.Generator) -> Params:
        if torch.rand((), generator=generator).item() >= self.p:
            return {"identity": True}
        return {
            "identity": False,
            "gamma": math.exp(_uniform(generator, math.log(self.gamma[0]), math.log(self.gamma[1]))),
            "contrast": _uniform(generator, *self.contrast),
            "brightness": _uniform(generator, -self.brightness, self.brightness),
            "noise_std": _uniform(generator, 0.0, self.noise_std),
            "noise_seed": int(torch.randint(0, 2**31 - 1, (), generator=generator).item()),
        }

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, params: Params,
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if params.get("identity", False):
            return image, mask
        lo, hi = image.amin(), image.amax()
        span = (hi - lo).clamp_min(1e-6)
        x = ((image - lo) / span).clamp(0, 1) ** params["gamma"]
        x = x * span + lo
        mean = x.mean()
        x = (x - mean) * params["contrast"] + mean + params["brightness"] * span
        if params["noise_std"] > 0:
            g = torch.Generator(device="cpu").manual_seed(params["noise_seed"])
            x = x + (torch.randn(x.shape, generator=g) * params["noise_std"] * span).to(x.device)
        return x, mask


@dataclass
class Compose:
    """Several transforms; draws and applies them in order. Params: {"0": ..., "1": ...}."""

    transforms: tuple[Any, ...]

    def draw(self, spatial_shape: Sequence[int], generator: torch.Generator) -> Params:
        return {str(i): t.draw(spatial_shape, generator) for i, t in enumerate(self.transforms)}

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, params: Params,
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        for i, t in enumerate(self.transforms):
            image, mask = t.apply(image, mask, params[str(i)], num_classes)
        return image, mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator,
                 num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, Params]:
        params = self.draw(image.shape[1:], generator)
        image, mask = self.apply(image, mask, params, num_classes)
        return image, mask, params


AUGMENTATIONS = ("rotate", "flip", "translate", "elastic", "intensity", "combined")


def classical_augmentation(kind: str = "combined", spatial_dims: int = 2, flip: bool = False) -> Compose:
    """The classical baselines GenSeg compares against, plus elastic and intensity.

    Args:
        kind: "rotate" (±15°), "flip" (each axis, p=0.5), "translate" (±10 %), "elastic",
            "intensity" (gamma, contrast, noise), or "combined" (rotate + scale + translate + elastic
            + intensity, and flips when ``flip``).
        flip: allow flips in "combined". Off by default: flipping swaps left/right anatomy, which is wrong
            for labels such as "left lung" and harmless for symmetric binary targets.
    """
    all_axes = tuple(range(spatial_dims))
    if kind == "rotate":
        ts: tuple[Any, ...] = (RandomSpatial(rotate_deg=15.0),)
    elif kind == "flip":
        ts = (RandomSpatial(flip_axes=all_axes),)
    elif kind == "translate":
        ts = (RandomSpatial(translate=0.1),)
    elif kind == "elastic":
        ts = (RandomSpatial(elastic_alpha=0.03),)
    elif kind == "intensity":
        ts = (RandomIntensity(gamma=(0.7, 1.5), contrast=(0.75, 1.25), brightness=0.1, noise_std=0.03),)
    elif kind == "combined":
        ts = (RandomSpatial(rotate_deg=15.0, scale=(0.85, 1.15), translate=0.1, shear=0.05,
                            flip_axes=all_axes if flip else (), elastic_alpha=0.02, p=0.9),
              RandomIntensity(gamma=(0.7, 1.5), contrast=(0.75, 1.25), brightness=0.1, noise_std=0.03, p=0.9))
    else:
        raise ConfigError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return Compose(ts)
