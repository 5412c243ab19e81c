"""What mean teacher and FixMatch share: the unlabelled stream, perturbations, ramp-up, the hook skeleton.

* ``UnlabelledStream`` draws a batch of unlabelled images for training step ``step`` from a generator seeded
  by (seed, rank, step): every rank gets its own images (as the labelled batches are seeded by rank), and a
  resumed run draws exactly what an uninterrupted one would without any RNG state in the checkpoint.
  Images get the *weak* spatial augmentation of the ``augment`` baseline (rotation, scale, translation, shear,
  elastic; flips only when asked) and, with a ``patch_size`` (3D), random patches.
* Perturbations work on a batch (B, C, *S), 2D or 3D, and draw from the step's generator: intensity (gamma,
  contrast, brightness, noise: ``segsynth.data.transforms.RandomIntensity`` per sample), Gaussian blur,
  invertible flips (so a flipped view's prediction can be flipped back) and CutMix boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from segsynth.data.case import Case
from segsynth.data.transforms import RandomIntensity, RandomSpatial, classical_augmentation
from segsynth.errors import ConfigError
from segsynth.segment.sources import CaseSource
from segsynth.utils.seed import derive_seed, torch_generator


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (for forwards that need no gradient sync)."""
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def logits_of(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Segmenter logits as the training loop reads them (first output of deep-supervision lists), in float32."""
    out = net(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.float()


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """exp(-5 (1 - t)^2), t = step / rampup_steps clipped to [0, 1] (Laine & Aila 2017; Tarvainen & Valpola)."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0), rampup_steps) / rampup_steps
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def weak_spatial(spatial_dims: int, flip: bool = False) -> RandomSpatial:
    """The spatial part of the ``augment`` baseline (the weak view of FixMatch, the shared view of mean teacher)."""
    return classical_augmentation("combined", spatial_dims, flip=flip).transforms[0]


class UnlabelledStream:
    """Per-step batches of unlabelled images (CPU tensors), weakly augmented, deterministic in (seed, rank, step)."""

    def __init__(self, cases: Sequence[Case], *, spatial_dims: int, seed: int, patch_size: Sequence[int] | None = None,
                 flip: bool = False, weak: bool = True, name: str = "unlabelled"):
        if not cases:
            raise ConfigError(f"{name} needs unlabelled images: give the sweep --unlabelled DIR, or leave "
                              "labelled cases unused (--n-test) so the split's pool provides them")
        # CaseSource does the sampling, weak augmentation, patching and collation; the masks are placeholders
        import numpy as np

        shapes = [c.image.shape[1:] for c in cases]
        stand_ins = [Case(c.case_id, c.image, np.zeros(s, dtype=np.uint8), {}) for c, s in zip(cases, shapes)]
        self.source = CaseSource(stand_ins, transform=weak_spatial(spatial_dims, flip) if weak else None,
                                 patch_size=patch_size, num_classes=2, foreground_fraction=0.0)
        self.seed = seed

    def generator(self, step: int) -> torch.Generator:
        return torch_generator(derive_seed(self.seed, "unlabelled-batch", rank(), step))

    def draw(self, batch_size: int, step: int) -> tuple[torch.Tensor, torch.Generator]:
        """The batch for ``step`` and the generator to draw that step's perturbations from."""
        g = self.generator(step)
        x, _ = self.source.draw(batch_size, g)
        return x, g


def perturb_intensity(x: torch.Tensor, transform: RandomIntensity, g: torch.Generator) -> torch.Tensor:
    """Apply an independently drawn intensity change to every sample of a batch (any device)."""
    out = []
    for xi in x:
        params = transform.draw(xi.shape[1:], g)
        out.append(transform.apply(xi, None, params)[0])
    return torch.stack(out)


def gaussian_blur(x: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Blur each sample (B, C, *S) with its own isotropic Gaussian sigma (voxels); sigma <= 0.05 leaves it."""
    nd = x.dim() - 2
    out = []
    for xi, s in zip(x, sigma):
        if s <= 0.05:
            out.append(xi)
            continue
        r = max(1, int(math.ceil(2.5 * s)))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        y = xi[:, None]  # (C, 1, *S): channels as batch
        for axis in range(nd):
            shape = [1, 1] + [1] * nd
            shape[2 + axis] = k.numel()
            pad = [0, 0] * nd
            pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
            y = F.pad(y, pad, mode="replicate")
            y = (F.conv2d if nd == 2 else F.conv3d)(y, k.view(shape))
        out.append(y[:, 0])
    return torch.stack(out)


def draw_flips(batch_size: int, axes: Sequence[int], g: torch.Generator, p: float = 0.5) -> list[list[int]]:
    """Per sample, the spatial axes (0-based) to flip, each with probability p."""
    return [[a for a in axes if torch.rand((), generator=g).item() < p] for _ in range(batch_size)]


def apply_flips(x: torch.Tensor, flips: Sequence[Sequence[int]]) -> torch.Tensor:
    """Flip sample i of (B, C, *S) along its listed spatial axes; applying it twice is the identity."""
    return torch.stack([xi.flip([1 + a for a in f]) if f else xi for xi, f in zip(x, flips)])


def cutmix_boxes(batch_size: int, spatial_shape: Sequence[int], g: torch.Generator, *, p: float = 0.5,
                 area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """Boolean (B, *S) boxes for CutMix (UniMatch's sizes): with probability p, a box of area fraction in ``area``
    and aspect ratio in ``ratio`` (2D; 3D boxes are cubes scaled the same way); empty otherwise."""
    nd = len(spatial_shape)
    boxes = torch.zeros((batch_size, *spatial_shape), dtype=torch.bool)
    for i in range(batch_size):
        if torch.rand((), generator=g).item() >= p:
            continue
        frac = area[0] + (area[1] - area[0]) * torch.rand((), generator=g).item()
        if nd == 2:
            r = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand((), generator=g).item())
            sides = [math.sqrt(frac * r), math.sqrt(frac / r)]
        else:
            sides = [frac ** (1 / nd)] * nd
        sl = []
        for s, f in zip(spatial_shape, sides):
            length = max(1, min(s, int(round(f * s))))
            start = int(torch.randint(s - length + 1, (), generator=g))
            sl.append(slice(start, start + length))
        boxes[(i, *sl)] = True
    return boxes


class SemiSupervisedHook:
    """Skeleton of a hook for ``train_segmenter``: draws the unlabelled batch, records the last terms.

    Subclasses implement ``unlabelled_loss(net, x_u, g, step, device) -> (loss, stats)``. The training loop calls
    ``extra_loss(net, step, device)`` inside the supervised step (same autocast), adds the returned term to
    the supervised loss before backward, and calls ``after_step(state)`` after the update.
    """

    name = "ssl"

    def __init__(self, unlabelled: Sequence[Case], *, spatial_dims: int, seed: int, batch_size: int,
                 patch_size: Sequence[int] | None = None, weight: float = 1.0, flip: bool = False):
        if weight < 0:
            raise ConfigError(f"{self.name}: weight must be >= 0, got {weight}")
        if batch_size < 1:
            raise ConfigError(f"{self.name}: unlabelled_batch must be >= 1, got {batch_size}")
        self.stream = UnlabelledStream(unlabelled, spatial_dims=spatial_dims, seed=seed, patch_size=patch_size,
                                       flip=flip, name=self.name)
        self.spatial_dims = spatial_dims
        self.batch_size = int(batch_size)
        self.weight = float(weight)
        self.flip = bool(flip)
        self.calls = 0
        self.last: dict[str, float] = {}

    def unlabelled_loss(self, net: torch.nn.Module, x_u: torch.Tensor, g: torch.Generator, step: int,
                        device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def extra_loss(self, net: torch.nn.Module, step: int, device: torch.device) -> torch.Tensor | None:
        x_u, g = self.stream.draw(self.batch_size, step)
        loss, stats = self.unlabelled_loss(net, x_u.to(device, non_blocking=True), g, step, device)
        self.calls += 1
        self.last = {f"{self.name}_loss": float(loss.detach()), **stats}
        return loss

    def after_step(self, state: Any) -> dict[str, float] | None:
        return dict(self.last) if self.last else None
