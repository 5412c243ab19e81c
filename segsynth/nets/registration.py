"""Registration and appearance networks for learned transformations (Zhao et al., CVPR 2019), 2D and 3D.

* ``RegistrationNet``: MONAI's ``VoxelMorphUNet`` predicts a stationary velocity field from a
  (moving, fixed) pair; MONAI's ``DVF2DDF`` integrates it (scaling and squaring) into a dense displacement
  field (DDF, voxel units, channel i = spatial axis i) and MONAI's ``Warp`` resamples the moving image.
  With ``integration_steps=0`` the backbone predicts the DDF directly. Inputs of any size are padded to the
  backbone's multiple and cropped back.
* ``AppearanceNet``: a MONAI ``UNet`` that maps (atlas, target in atlas space) to an additive intensity
  change in atlas space; its last convolution starts at zero so the initial change is none.
* Losses: ``similarity_loss`` (local NCC or MSE), ``smoothness_loss`` (squared forward differences of a field),
  ``masked_smoothness_loss`` (squared forward differences, not penalised across label boundaries) and
  ``label_boundaries``.
* Warps: ``warp_image`` and ``warp_labels`` (one-hot + bilinear + argmax, or nearest neighbour) keep the
  label set.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import LocalNormalizedCrossCorrelationLoss
from monai.networks.blocks import DVF2DDF, Warp
from monai.networks.layers import Conv
from monai.networks.nets import UNet, VoxelMorphUNet

from segsynth.errors import ConfigError
from segsynth.utils.labels import class_argmax

# MONAI warns each time a Warp is built (also inside DVF2DDF) that it uses torch's grid_sample: expected here.
warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pad the spatial dims of (B, C, *S) to a multiple (replicate), returning the (before, after) per axis."""
    spatial = x.shape[2:]
    pads = []
    for s in spatial:
        total = (-s) % multiple
        pads.append((total // 2, total - total // 2))
    if not any(a or b for a, b in pads):
        return x, pads
    flat: list[int] = []
    for a, b in reversed(pads):  # F.pad wants the last axis first
        flat += [a, b]
    return F.pad(x, flat, mode="replicate"), pads


def _crop(x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    sl = [slice(None), slice(None)] + [slice(a, x.shape[2 + i] - b) for i, (a, b) in enumerate(pads)]
    return x[tuple(sl)]


class RegistrationNet(torch.nn.Module):
    """VoxelMorph-style deformable registration: moving -> fixed.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one image (moving and fixed are concatenated inside).
        channels: VoxelMorphUNet encoder/decoder channels, in pairs; ``len(channels) // 2`` poolings.
        final_conv_channels: channels of the convolutions after the U-Net.
        integration_steps: scaling-and-squaring steps (0: the backbone predicts the DDF, no diffeomorphism).
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, channels: Sequence[int] = (16, 32, 32, 32),
                 final_conv_channels: Sequence[int] = (16, 16), integration_steps: int = 7):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 2 or len(channels) % 2:
            raise ConfigError(f"registration channels must come in pairs, got {list(channels)}")
        self.config: dict[str, Any] = {"spatial_dims": spatial_dims, "in_channels": in_channels,
                                       "channels": list(channels), "final_conv_channels": list(final_conv_channels),
                                       "integration_steps": integration_steps}
        self.spatial_dims = spatial_dims
        self.integration_steps = integration_steps
        self.backbone = VoxelMorphUNet(spatial_dims, 2 * in_channels, unet_out_channels=channels[1],
                                       channels=tuple(channels), final_conv_channels=tuple(final_conv_channels))
        out_conv = self.backbone.net[1].final_conv_out.conv
        torch.nn.init.normal_(out_conv.weight, std=1e-5)  # start near the identity transform (as VoxelMorph)
        torch.nn.init.zeros_(out_conv.bias)
        self.size_divisor = 2 ** (len(channels) // 2)
        self.dvf2ddf = DVF2DDF(num_steps=integration_steps) if integration_steps > 0 else None
        self.warper = _warper("bilinear", "border")

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The backbone's field (B, spatial_dims, *S): a velocity, or the DDF when not diffeomorphic."""
        if moving.shape != fixed.shape:
            raise ConfigError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have one shape")
        x, pads = _pad_to_multiple(torch.cat([moving, fixed], 1), self.size_divisor)
        return _crop(self.backbone(x), pads)

    def integrate(self, field: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """Velocity -> DDF (``sign=-1`` gives the inverse transform of a diffeomorphic model)."""
        if self.dvf2ddf is None:
            if sign != 1.0:
                raise ConfigError("the inverse by negation needs a diffeomorphic model (integration_steps > 0)")
            return field
        return self.dvf2ddf(sign * field)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (moving warped to fixed, DDF)."""
        ddf = self.integrate(self.velocity(moving, fixed))
        return self.warper(moving, ddf), ddf


class AppearanceNet(torch.nn.Module):
    """U-Net predicting an additive intensity change in atlas space from (atlas, target in atlas space).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of one image; the output has the same number of channels.
        channels: MONAI UNet channels per level (one stride-2 step between levels).
        num_res_units: residual units per level.
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64),
                 num_res_units: int = 1):
        super().__init__()
        if len(channels) < 2:
            raise ConfigError(f"appearance channels need at least 2 levels, got {list(channels)}")
        self.config: dict[str, Any] = {"spatial_dims": spatial_dims, "in_channels": in_channels,
                                       "channels": list(channels), "num_res_units": num_res_units}
        strides = (2,) * (len(channels) - 1)
        self.unet = UNet(spatial_dims, 2 * in_channels, channels[0], channels=tuple(channels), strides=strides,
                         num_res_units=num_res_units, norm="instance")
        self.act = torch.nn.PReLU()
        self.out = Conv[Conv.CONV, spatial_dims](channels[0], in_channels, kernel_size=1)
        torch.nn.init.zeros_(self.out.weight)  # no intensity change at the start
        torch.nn.init.zeros_(self.out.bias)
        self.size_divisor = 2 ** len(strides)

    def forward(self, atlas: torch.Tensor, target_in_atlas: torch.Tensor) -> torch.Tensor:
        x, pads = _pad_to_multiple(torch.cat([atlas, target_in_atlas], 1), self.size_divisor)
        return _crop(self.out(self.act(self.unet(x))), pads)


# ----------------------------------------------------------------------------------------------- warps
_WARPERS: dict[tuple[str, str], Warp] = {}


def _warper(mode: str, padding_mode: str) -> Warp:
    """MONAI Warp modules are stateless: build each (mode, padding) once (building one logs a warning)."""
    key = (mode, padding_mode)
    if key not in _WARPERS:
        _WARPERS[key] = Warp(mode=mode, padding_mode=padding_mode)
    return _WARPERS[key]

def warp_image(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (B, C, *S) images with a DDF (B, nd, *S) in voxel units; border padding."""
    return _warper(mode, "border")(image.float(), ddf)


def warp_labels(mask: torch.Tensor, ddf: torch.Tensor, num_classes: int, mode: str = "onehot") -> torch.Tensor:
    """Warp integer label maps (B, *S) with a DDF; the result only holds ids of the input's label set.

    Args:
        mode: "onehot" (bilinear on the one-hot encoding, then argmax: smooth boundaries) or "nearest".
            Outside the field of view is background.
    """
    if mode == "nearest":
        out = _warper("nearest", "zeros")(mask[:, None].float(), ddf)
        return out[:, 0].round().long()
    if mode != "onehot":
        raise ConfigError(f"label warp mode must be 'onehot' or 'nearest', got {mode!r}")
    onehot = F.one_hot(mask.long(), max(num_classes, 2)).movedim(-1, 1).float()
    onehot[:, 0] += 1e-4  # ties and the zero padding outside resolve to background
    warped = _warper("bilinear", "zeros")(onehot, ddf)
    return class_argmax(warped, 1)


def warp_probabilities(onehot: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Warp class probabilities (B, K, *S); outside the field of view becomes background. Sums to 1."""
    warped = _warper("bilinear", "zeros")(onehot.float(), ddf)
    missing = (1.0 - warped.sum(1, keepdim=True)).clamp_min(0.0)
    warped = torch.cat([warped[:, :1] + missing, warped[:, 1:]], 1)
    return warped / warped.sum(1, keepdim=True).clamp_min(1e-6)


# ---------------------------------------------------------------------------------------------- losses
def similarity_loss(warped: torch.Tensor, fixed: torch.Tensor, kind: str = "ncc", window: int = 9) -> torch.Tensor:
    """Image dissimilarity: "ncc" (MONAI local NCC, in [-1, 0]) or "mse"."""
    if kind == "mse":
        return F.mse_loss(warped, fixed)
    if kind != "ncc":
        raise ConfigError(f"similarity must be 'ncc' or 'mse', got {kind!r}")
    nd = warped.ndim - 2
    w = min(window, min(warped.shape[2:]))
    w = max(3, w if w % 2 else w - 1)
    loss = LocalNormalizedCrossCorrelationLoss(spatial_dims=nd, kernel_size=w, kernel_type="rectangular")
    return loss(warped, fixed)


def smoothness_loss(ddf: torch.Tensor) -> torch.Tensor:
    """Mean squared spatial gradient (forward differences, summed over axes) of a displacement or velocity
    field, VoxelMorph's ``Grad("l2")``. MONAI's ``DiffusionLoss`` computes the same with central differences
    but indexes tensors with lists, which torch deprecates (a warning on every call in torch 2.13)."""
    return masked_smoothness_loss(ddf, None)


def label_boundaries(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *S) float: 1 where a voxel or one of its direct neighbours has another label."""
    nd = mask.ndim - 1
    onehot = F.one_hot(mask.long(), max(num_classes, 2)).movedim(-1, 1).float()
    pool = F.max_pool2d if nd == 2 else F.max_pool3d
    dil = pool(onehot, 3, stride=1, padding=1)
    ero = -pool(-onehot, 3, stride=1, padding=1)
    return ((dil - ero).amax(1, keepdim=True) > 0).float()


def masked_smoothness_loss(field: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared forward difference of ``field`` (B, C, *S), each difference weighted by ``weight``
    (B, 1, *S) at its first voxel (0 on label boundaries: no penalty across them)."""
    nd = field.ndim - 2
    total = field.new_zeros(())
    for d in range(nd):
        axis = 2 + d
        n = field.shape[axis]
        diff = field.narrow(axis, 1, n - 1) - field.narrow(axis, 0, n - 1)
        sq = diff**2
        if weight is not None:
            sq = sq * weight.narrow(axis, 0, n - 1)
        total = total + sq.mean()
    return total


def identity_ddf(batch: int, spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero displacement field (B, nd, *S)."""
    return torch.zeros((batch, len(spatial_shape), *spatial_shape), device=device)


def random_smooth_ddf(spatial_shape: Sequence[int], generator: torch.Generator, max_displacement: float = 3.0,
                      control_points: int = 5, batch: int = 1) -> torch.Tensor:
    """A random smooth DDF (B, nd, *S) in voxels: Gaussian noise on a coarse grid, upsampled (rand-aug).

    ``max_displacement`` is the standard deviation of the control-point displacements, in voxels.
    """
    nd = len(spatial_shape)
    coarse = torch.randn((batch, nd) + (control_points,) * nd, generator=generator) * max_displacement
    mode = "bicubic" if nd == 2 else "trilinear"
    return F.interpolate(coarse, size=tuple(spatial_shape), mode=mode, align_corners=True)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU while training registration models, then restore the default.

    VoxelMorph starts its flow layer at ~1e-5 and scaling-and-squaring divides it by 2**steps, so the first
    backward passes are full of denormals, which x86 CPUs process 10-100x slower (measured here: 20 s instead
    of 1 s for six 32x32 steps). Values below 1e-38 do not matter to the result.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def default_window(spatial_shape: Sequence[int]) -> int:
    """Local NCC window: 9 (VoxelMorph) for images of 64+ voxels, smaller for tiny ones."""
    return max(3, min(9, 2 * (min(spatial_shape) // 8) + 1))


__all__ = ["AppearanceNet", "RegistrationNet", "count_parameters", "default_window", "flush_denormals", "identity_ddf",
           "label_boundaries", "masked_smoothness_loss", "random_smooth_ddf", "similarity_loss",
           "smoothness_loss", "warp_image", "warp_labels", "warp_probabilities"]

