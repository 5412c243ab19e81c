"""What GenSeg's GAN trainer (``gan``) and generated source (``sources``) use of the generator.

``generator.py`` builds a ``GanTrainer`` and ``AugmentedMasks`` and so imports ``gan`` and ``sources``; those two
name this protocol instead of ``GenSegGenerator`` (which satisfies it), so the imports run one way only.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from segsynth.generators.seg_term import SegmentationTerm
from segsynth.nets.pix2pix import PatchGANDiscriminator, Pix2PixGenerator


class RenderingGenerator(Protocol):
    """A built mask-to-image generator with its discriminator (``GenSegGenerator``)."""

    disc: PatchGANDiscriminator | None
    options: dict[str, Any]
    device: torch.device
    precision: torch.dtype | None
    seg_term: SegmentationTerm | None

    def require_net(self) -> Pix2PixGenerator:
        """The generator network; a ConfigError when it is not built yet."""
        ...

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """Label maps (B, *S) -> one-hot (B, K, *S)."""
        ...

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the data's intensity range -> [-1, 1]."""
        ...

    def from_unit(self, t: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> the data's intensity range."""
        ...

    def generate(self, masks: torch.Tensor, generator: torch.Generator | None = None, weights: Any = None,
                 unit: bool = False) -> torch.Tensor:
        """Images (B, C, *S) for label maps (B, *S)."""
        ...
