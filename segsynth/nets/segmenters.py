"""Segmenters through one factory: U-Net (MONAI BasicUNet), nnU-Net-like DynUNet, DeepLabV3+-style.

All map (B, C, *S) to logits (B, K, *S) for 2D and 3D alike. ``size_divisor`` on each model tells the
inference code to what multiple the input must be padded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import SimpleASPP
from monai.networks.layers import Act, Conv, Norm
from monai.networks.nets import BasicUNet, DynUNet
from monai.networks.nets.resnet import ResNetFeatures

from segsynth.errors import ConfigError, DataError

SEGMENTERS = ("unet", "dynunet", "deeplab")


def build_segmenter(name: str, spatial_dims: int, in_channels: int, out_channels: int, **kw: Any) -> torch.nn.Module:
    """Build a segmenter by name.

    Args:
        name: "unet" (BasicUNet; kw ``features`` 6-tuple), "dynunet" (kw ``levels``, ``filters``),
            "deeplab" (kw ``backbone`` resnet10/18/34, ``aspp_channels``).
        spatial_dims: 2 or 3.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if name == "unet":
        features = tuple(kw.pop("features", (32, 32, 64, 128, 256, 32)))
        model = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                          features=features, dropout=kw.pop("dropout", 0.0))
        model.size_divisor = 16
    elif name == "dynunet":
        model = _dynunet(spatial_dims, in_channels, out_channels, **kw)
        kw = {}
    elif name == "deeplab":
        model = DeepLabV3Plus(spatial_dims, in_channels, out_channels, **kw)
        kw = {}
    else:
        raise ConfigError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    if kw:
        raise ConfigError(f"unknown options for segmenter {name!r}: {sorted(kw)}")
    model.segsynth_config = {"name": name, "spatial_dims": spatial_dims, "in_channels": in_channels,
                             "out_channels": out_channels}
    return model


def check_input_size(model: torch.nn.Module, spatial_shape: Sequence[int], where: object | None = None,
                     options_hint: bool = True) -> None:
    """A clear error where an input is too small for the segmenter: its deepest level (1/``size_divisor`` of
    each axis) must hold more than one voxel, or instance normalisation fails deep inside torch.

    Args:
        where: the file (or folder) the input comes from: a ``DataError`` naming it (else a ``ConfigError``).
        options_hint: end with the options that set the working size (training; a saved model's is fixed).
    """
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    shape = tuple(int(s) for s in spatial_shape)
    deepest = [max(1, s // divisor) for s in shape]
    if divisor > 1 and math.prod(deepest) <= 1:
        name = getattr(model, "segsynth_config", {}).get("name", type(model).__name__)
        problem = (f"inputs of {'x'.join(map(str, shape))} voxels are too small for the {name} segmenter: it "
                   f"down-samples {divisor}x, so its deepest level would be a single voxel; it needs at least "
                   f"{2 * divisor} voxels along one axis")
        if options_hint:
            problem += " (set the working size with --size, --shape-3d or --patch)"
        raise DataError(problem, where) if where is not None else ConfigError(problem)


def _dynunet(spatial_dims: int, in_channels: int, out_channels: int, levels: int = 5,
             filters: tuple[int, ...] | None = None) -> DynUNet:
    """nnU-Net-like: 3x3 convs, stride-2 down-sampling, instance norm, leaky ReLU, filters doubling to 320."""
    kernels = [3] * levels
    strides = [1] + [2] * (levels - 1)
    if filters is None:
        filters = tuple(min(32 * 2**i, 320) for i in range(levels))
    model = DynUNet(spatial_dims, in_channels, out_channels, kernel_size=kernels, strides=strides,
                    upsample_kernel_size=strides[1:], filters=list(filters), res_block=True)
    model.size_divisor = 2 ** (levels - 1)
    return model


class DeepLabV3Plus(torch.nn.Module):
    """DeepLabV3+-style: MONAI ResNet encoder (output stride 16), SimpleASPP, low-level skip at stride 4.

    No pretrained weights are loaded (nothing is downloaded); a local checkpoint can be given to the
    trainer's ``init`` instead.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, backbone: str = "resnet10",
                 aspp_channels: int = 32, decoder_channels: int = 64):
        super().__init__()
        enc = ResNetFeatures(backbone, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels)
        del enc.layer4  # output stride 16 is kept; stride 32 loses too much at 64-128 px
        self.encoder = enc
        high_ch = _out_channels(enc.layer3)
        low_ch = _out_channels(enc.layer1)
        self.aspp = SimpleASPP(spatial_dims, high_ch, aspp_channels, kernel_sizes=(1, 3, 3, 3),
                               dilations=(1, 2, 4, 6), norm_type="INSTANCE")
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.INSTANCE, spatial_dims]
        self.low_proj = torch.nn.Sequential(conv(low_ch, 32, 1, bias=False), norm(32), Act[Act.RELU]())
        self.decoder = torch.nn.Sequential(
            conv(4 * aspp_channels + 32, decoder_channels, 3, padding=1, bias=False), norm(decoder_channels),
            Act[Act.RELU](),
            conv(decoder_channels, decoder_channels, 3, padding=1, bias=False), norm(decoder_channels),
            Act[Act.RELU](),
            conv(decoder_channels, out_channels, 1),
        )
        self.size_divisor = 16
        self._mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        size = x.shape[2:]
        h = e.act(e.bn1(e.conv1(x)))
        if not e.no_max_pool:
            h = e.maxpool(h)
        low = e.layer1(h)
        high = e.layer3(e.layer2(low))
        a = F.interpolate(self.aspp(high), size=low.shape[2:], mode=self._mode, align_corners=False)
        out = self.decoder(torch.cat([a, self.low_proj(low)], 1))
        return F.interpolate(out, size=size, mode=self._mode, align_corners=False)


def _out_channels(layer: torch.nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return convs[-1].out_channels
