"""brainSPADE losses: perceptual features of a local segmenter, contrastive style (InfoNCE), KLD."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from segsynth.errors import ConfigError


class _StopForward(Exception):
    """Raised by a forward hook once every feature a loss needs has been computed."""


class SegmenterFeatureLoss(torch.nn.Module):
    """Perceptual loss from a *locally saved* segsynth segmenter (no download): L1 between its encoder features.

    MONAI's ``PerceptualLoss`` needs torchvision/lpips or an online torch.hub download, neither of which
    works offline; a segmenter trained on the same kind of images is a reasonable local feature network.
    Each channel of the inputs is fed separately as a 1-channel image (repeated to the segmenter's input
    channels), so it also applies to PV maps.

    Args:
        model_dir: folder written by ``segsynth.segment.model_io.save_segmenter``.
        layers: names of the sub-modules whose outputs are compared (default: the first encoder stages of
            a BasicUNet, or the first three top-level children otherwise).
    """

    def __init__(self, model_dir: str | Path, layers: Sequence[str] | None = None):
        super().__init__()
        from segsynth.segment.model_io import load_segmenter

        model, config = load_segmenter(model_dir, "cpu")
        self.net = model.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.in_channels = int(config["segmenter"]["in_channels"])
        names = dict(self.net.named_modules())
        if layers is None:
            layers = [n for n in ("conv_0", "down_1", "down_2") if n in names] or \
                [n for n, _ in self.net.named_children()][:3]
        missing = [n for n in layers if n not in names]
        if missing:
            raise ConfigError(f"perceptual model {model_dir} has no layers {missing}")
        self.layers = list(layers)
        self._feats: list[torch.Tensor] = []
        for n in self.layers:
            names[n].register_forward_hook(self._keep)

    def _keep(self, _module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        self._feats.append(out)
        if len(self._feats) == len(self.layers):
            raise _StopForward  # the rest of the network is not needed

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._feats = []
        b, c = x.shape[:2]
        flat = x.reshape(b * c, 1, *x.shape[2:]).repeat(1, self.in_channels, *([1] * (x.ndim - 2)))
        divisor = int(getattr(self.net, "size_divisor", 1))
        if any(s % divisor for s in flat.shape[2:]):
            pads: list[int] = []
            for s in reversed(flat.shape[2:]):
                pads += [0, (-s) % divisor]
            flat = F.pad(flat, pads, mode="replicate")
        try:
            self.net(flat)
        except _StopForward:
            pass
        return list(self._feats)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._features(x)
        with torch.no_grad():
            fy = self._features(y)
        return torch.stack([(a - b).abs().mean() for a, b in zip(fx, fy)]).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` and no other row (cosine similarity)."""
    a = F.normalize(a.flatten(1), dim=1)
    b = F.normalize(b.flatten(1), dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def kld_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the code, averaged over the batch."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over the latent map, averaged over the batch (label autoencoder)."""
    return 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1,
                           dim=list(range(1, mu.ndim))).mean()


def feature_matching_loss(feat_fake: Sequence[Sequence[torch.Tensor]],
                          feat_real: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between the discriminator features of generated and real images (every scale, every layer)."""
    return torch.stack([F.l1_loss(a, b.detach()) for fa, fr in zip(feat_fake, feat_real)
                        for a, b in zip(fa, fr)]).mean()


def modality_loss(classifier: torch.nn.Module, fake: torch.Tensor, domains: torch.Tensor, n_domains: int
                  ) -> torch.Tensor:
    """BCE of the frozen modality classifier on generated images against the domain of their style images."""
    target = F.one_hot(domains, n_domains).float().to(fake.device)
    return F.binary_cross_entropy_with_logits(classifier(fake), target)
