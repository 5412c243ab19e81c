"""How close synthetic images are to real ones, and how varied: a FID-like distance and diversity scores.

Which encoder, and why
----------------------
FID proper uses an ImageNet Inception network, which cannot be downloaded here and is a poor fit for
grey-level MRI anyway. The default encoder is ``RandomConvEncoder``: a small convolutional network with
**frozen random weights drawn from a fixed seed** (no download, no training, identical on every machine
with the same torch version, any number of channels, 2D or 3D). Random convolutional features respond to
local intensity statistics, edges and textures at several scales; Fréchet distances on them rank image
sets sensibly (a random-feature FID), but the numbers are only comparable between runs that use the same
encoder settings, never with published Inception FIDs. ``SegmenterEncoder`` uses a trained segsynth
segmenter's encoder instead (more anatomical, but it depends on that training run); pass it when a trained
segmenter of the same dataset exists.

Features are the channel-wise mean and standard deviation of every encoder stage (global pooling), and are
standardised with the *real* set's per-feature mean and standard deviation before the distance, so that no
stage dominates by scale. The distance itself is MONAI's ``FIDMetric``.

Scores (``quality_report``)
---------------------------
* ``fid``: Fréchet distance between real and synthetic features (lower = closer).
* ``fid_real_halves``: the same between two random halves of the real images, the floor a perfect
  generator would reach with this many images (FID is biased upwards for small sets).
* ``diversity_*``: mean pairwise Euclidean distance between standardised features; ``diversity_ratio``
  = synthetic / real (about 1 = as varied as the real images, well below 1 = mode collapse).
* ``ssim_*``: mean SSIM (MONAI) of random pairs of images within a set (lower = more diverse).
* ``grid_energy``: per grid period P (2, 4, 8, 16 pixels), how much the images look built of P-pixel blocks
  (``grid_report``): about 1 for real images; away from 1 when a generator's coarse feature maps show through.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.data.case import Case
from segsynth.errors import DataError
from segsynth.utils.seed import torch_generator

ImageSet = Sequence[Case] | Sequence[np.ndarray] | torch.Tensor


class RandomConvEncoder(torch.nn.Module):
    """Frozen randomly initialised conv encoder (seeded): stride-2 3x3 convs + LeakyReLU, mean/std pooled.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        widths: channels of each stage (feature size = 2 * sum(widths)).
        seed: seed of the weights; keep it fixed to compare runs.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, widths: Sequence[int] = (8, 16, 32),
                 seed: int = 0):
        super().__init__()
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        self.description = f"random-conv(seed={seed}, widths={list(widths)})"
        layers = []
        c = in_channels
        for w in widths:
            layers.append(conv(c, int(w), kernel_size=3, stride=2, padding=1))
            c = int(w)
        self.stages = torch.nn.ModuleList(layers)
        g = torch_generator(seed)
        for m in self.stages:
            torch.nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu", generator=g)
            torch.nn.init.zeros_(m.bias)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for m in self.stages:
            x = F.leaky_relu(m(x), 0.2)
            flat = x.flatten(2)
            feats += [flat.mean(2), flat.std(2, correction=0)]
        return torch.cat(feats, 1)


class SegmenterEncoder(torch.nn.Module):
    """A trained segmenter as feature extractor: mean/std pooled outputs of some of its layers.

    Args:
        model: a segsynth segmenter (or any network taking (B, C, *S)).
        layers: sub-module names (default: BasicUNet's encoder ``conv_0``..``down_4``, otherwise the first
            half of the top-level children).
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[str] | None = None):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        names = dict(self.model.named_modules())
        if layers is None:
            layers = [n for n in ("conv_0", "down_1", "down_2", "down_3", "down_4") if n in names]
            if not layers:
                children = [n for n, _ in self.model.named_children()]
                layers = children[: max(1, len(children) // 2)]
        missing = [n for n in layers if n not in names]
        if missing:
            raise DataError(f"segmenter has no layers {missing}")
        self.layers = list(layers)
        self.description = f"segmenter({type(model).__name__}: {', '.join(self.layers)})"
        self._out: list[torch.Tensor] = []
        for n in self.layers:
            names[n].register_forward_hook(lambda _m, _i, o: self._out.append(o))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out = []
        divisor = int(getattr(self.model, "size_divisor", 1))
        pads: list[int] = []
        for s in reversed(x.shape[2:]):
            pads += [0, (-s) % divisor]
        self.model(F.pad(x, pads, mode="replicate") if any(pads) else x)
        feats = []
        for o in self._out:
            flat = o.flatten(2)
            feats += [flat.mean(2), flat.std(2, correction=0)]
        return torch.cat(feats, 1)


def as_image_tensor(images: ImageSet) -> torch.Tensor:
    """Cases, arrays (C, *S) or a tensor (N, C, *S) -> float tensor (N, C, *S) (all of one shape)."""
    if isinstance(images, torch.Tensor):
        return images.float()
    arrays = [c.image if isinstance(c, Case) else np.asarray(c) for c in images]
    if not arrays:
        raise DataError("no images given")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images must share one shape, found {sorted(shapes)[:4]}")
    return torch.as_tensor(np.stack(arrays), dtype=torch.float32)


#: block sizes ``grid_report`` looks for: the cells of a decoder's coarse maps at 64² (2 … 16 pixels)
GRID_PERIODS = (2, 4, 8, 16)


def grid_energy(images: ImageSet, period: int) -> float:
    """How much an image set looks built of ``period``-pixel blocks.

    The mean absolute step between neighbouring pixels *across* the lines of a ``period``-pixel grid (between
    index ``k·period − 1`` and ``k·period``), divided by the mean step everywhere else, along every spatial axis.
    Natural images score about 1 at every period; images whose decoder up-sampled coarse maps by nearest
    neighbour (each cell copied into a block) score above 1 at the blocks' size. A convolution after a nearest ×2
    up-sampling can also turn it below 1 at 2 pixels: with a small centre weight its output steps more inside a
    copied pair than across pairs. A period-2 checkerboard whose steps are equal everywhere scores 1.
    """
    if period < 2:
        raise DataError(f"a grid period must be >= 2 pixels, not {period}")
    x = as_image_tensor(images)
    across, within = [], []
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        if n <= period:
            continue
        step = x.diff(dim=axis).abs().movedim(axis, -1)
        edge = torch.zeros(n - 1, dtype=torch.bool)
        edge[period - 1::period] = True
        across.append(step[..., edge].mean())
        within.append(step[..., ~edge].mean())
    if not across:
        raise DataError(f"images of {tuple(x.shape[2:])} are too small to hold a {period}-pixel grid")
    inside = float(torch.stack(within).mean())
    return float(torch.stack(across).mean()) / inside if inside > 0 else float("nan")


def grid_report(real: ImageSet, synthetic: ImageSet, periods: Sequence[int] = GRID_PERIODS) -> dict[str, Any]:
    """``grid_energy`` of both sets at each period small enough for the images (lists in the order of
    ``periods``)."""
    xr, xs = as_image_tensor(real), as_image_tensor(synthetic)
    fit = [p for p in periods if p < min(xs.shape[2:])]
    return {"periods": fit, "real": [round(grid_energy(xr, p), 4) for p in fit],
            "synthetic": [round(grid_energy(xs, p), 4) for p in fit]}


def default_encoder(images: torch.Tensor, seed: int = 0) -> RandomConvEncoder:
    return RandomConvEncoder(spatial_dims=images.ndim - 2, in_channels=images.shape[1], seed=seed)


@torch.no_grad()
def extract_features(images: ImageSet, encoder: torch.nn.Module | None = None, *, batch_size: int = 32,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Feature vectors (N, F) on the CPU."""
    x = as_image_tensor(images)
    enc = (encoder or default_encoder(x)).to(device).eval()
    out = [enc(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def standardise(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Z-score ``features`` with the per-feature mean and std of ``reference``."""
    mu = reference.mean(0)
    sd = reference.std(0).clamp_min(1e-6) if len(reference) > 1 else torch.ones_like(mu)
    return (features - mu) / sd


def frechet_distance(real: torch.Tensor, synthetic: torch.Tensor) -> float:
    """MONAI ``FIDMetric`` on feature vectors (N, F) (each set needs at least 2 vectors)."""
    from monai.metrics import FIDMetric

    if len(real) < 2 or len(synthetic) < 2:
        raise DataError("the Fréchet distance needs at least 2 images in each set")
    with warnings.catch_warnings():
        # scipy's sqrtm(disp=...) deprecation inside MONAI; singular-matrix warnings for small sets
        warnings.simplefilter("ignore")
        try:
            return float(FIDMetric()(synthetic.double(), real.double()))
        except ValueError:  # near-singular covariances: regularise and retry
            eps = 1e-4 * torch.eye(real.shape[1], dtype=torch.double)
            from monai.metrics.fid import compute_frechet_distance

            def cov(f: torch.Tensor) -> torch.Tensor:
                return torch.cov(f.double().t()) + eps

            out = compute_frechet_distance(synthetic.double().mean(0), cov(synthetic), real.double().mean(0), cov(real))
            return float(out.real if torch.is_complex(out) else out)


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between feature vectors (standardise them first)."""
    if len(features) < 2:
        return float("nan")
    d = torch.cdist(features.double(), features.double())
    n = len(features)
    return float(d.sum() / (n * (n - 1)))


def pairwise_ssim(images: ImageSet, n_pairs: int = 200, seed: int = 0) -> float:
    """Mean SSIM (MONAI) of random pairs of different images of one set (lower = more diverse)."""
    from monai.metrics import SSIMMetric

    x = as_image_tensor(images)
    if len(x) < 2:
        return float("nan")
    g = torch_generator(seed)
    i = torch.randint(len(x), (n_pairs,), generator=g)
    j = (i + torch.randint(1, len(x), (n_pairs,), generator=g)) % len(x)
    data_range = float(x.max() - x.min()) or 1.0
    win = min(7, min(x.shape[2:]) // 2 * 2 - 1)
    metric = SSIMMetric(spatial_dims=x.ndim - 2, data_range=data_range, win_size=max(3, win))
    vals = []
    for a in range(0, n_pairs, 64):
        vals.append(metric(x[i[a:a + 64]], x[j[a:a + 64]]).flatten())
    return float(torch.cat(vals).mean())


def quality_report(real: ImageSet, synthetic: ImageSet, *, encoder: torch.nn.Module | None = None,
                   seed: int = 0, device: torch.device | str = "cpu", n_pairs: int = 200) -> dict[str, Any]:
    """FID-like distance, its real-vs-real floor, and diversity of a synthetic image set against real images.

    Args:
        real: real images (Cases or arrays (C, *S)), never used to train the generator when possible.
        synthetic: synthetic images of the same shape.
        encoder: feature network (default: ``RandomConvEncoder(seed=seed)``).
    """
    xr, xs = as_image_tensor(real), as_image_tensor(synthetic)
    if xr.shape[1:] != xs.shape[1:]:
        raise DataError(f"real images are {tuple(xr.shape[1:])}, synthetic {tuple(xs.shape[1:])}")
    enc = encoder or default_encoder(xr, seed)
    fr = extract_features(xr, enc, device=device)
    fs = extract_features(xs, enc, device=device)
    zr, zs = standardise(fr, fr), standardise(fs, fr)
    report: dict[str, Any] = {
        "encoder": getattr(enc, "description", type(enc).__name__),
        "n_real": len(xr), "n_synthetic": len(xs),
        "fid": frechet_distance(zr, zs),
        "diversity_real": diversity(zr), "diversity_synthetic": diversity(zs),
        "ssim_real": pairwise_ssim(xr, n_pairs, seed), "ssim_synthetic": pairwise_ssim(xs, n_pairs, seed),
    }
    report["grid_energy"] = grid_report(xr, xs)
    report["diversity_ratio"] = report["diversity_synthetic"] / report["diversity_real"] \
        if report["diversity_real"] > 0 else float("nan")
    if len(xr) >= 4:
        perm = torch.randperm(len(zr), generator=torch_generator(seed))
        half = len(zr) // 2
        report["fid_real_halves"] = frechet_distance(zr[perm[:half]], zr[perm[half:2 * half]])
    else:
        report["fid_real_halves"] = float("nan")
    return report
