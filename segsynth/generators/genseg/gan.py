"""GenSeg stage I: Pix2Pix GAN updates of the generator weights (never alpha)."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import PatchAdversarialLoss

from segsynth.errors import ConfigError
from segsynth.generators.genseg.helpers import average_grads, frozen
from segsynth.generators.genseg.protocol import RenderingGenerator
from segsynth.utils.labels import class_argmax
from segsynth.utils.precision import autocast


class GanTrainer:
    """Pix2Pix updates of the generator weights W (never alpha) and the PatchGAN: LSGAN + lambda L1."""

    def __init__(self, gen: RenderingGenerator, lr: float | None = None, betas: tuple[float, float] = (0.5, 0.999)):
        net = gen.require_net()
        if gen.disc is None:
            raise ConfigError("GAN training needs the discriminator (this generator was saved without one)")
        self.gen = gen
        lr = gen.options["gen_lr"] if lr is None else lr
        self.opt_g = torch.optim.Adam(net.weight_parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(gen.disc.parameters(), lr=lr, betas=betas)
        self.adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.lambda_l1 = gen.options["lambda_l1"]

    def generator_loss(self, onehot: torch.Tensor, target: torch.Tensor, fake: torch.Tensor,
                       precision: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """LSGAN generator term + lambda L1 for already generated ``fake`` (all in [-1, 1]), + the segmentation
        term (``gen.seg_term``: Dice + CE of a real-pair segmenter on ``fake`` against its mask) when present.

        ``precision`` autocasts the discriminator's forward; the losses are computed in fp32. The architecture's
        hypergradient calls this in fp32 (its finite differences would drown in bf16 rounding)."""
        assert self.gen.disc is not None
        with autocast(self.gen.device, precision):
            pred = self.gen.disc(torch.cat([onehot, fake], 1))
        adv = self.adv(pred.float(), target_is_real=True, for_discriminator=False)
        l1 = (fake.float() - target).abs().mean()
        loss, parts = adv + self.lambda_l1 * l1, {"gan_g": float(adv.detach()), "gan_l1": float(l1.detach())}
        term = self.gen.seg_term
        if term is not None and term.weight > 0:
            seg = term.loss(self.gen.from_unit(fake), class_argmax(onehot, 1))
            loss = loss + term.weight * seg
            parts["gan_seg"] = float(seg.detach())
        return loss, parts

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One discriminator and one generator update on real pairs (x images, y label maps, CPU or device).

        The forwards run under ``gen.precision`` autocast (bf16 or fp32); losses and optimiser steps in fp32."""
        gen, net, disc = self.gen, self.gen.require_net(), self.gen.disc
        assert disc is not None
        net.train()
        disc.train()
        onehot = gen.encode(y)
        target = gen.to_unit(x.to(gen.device, onehot.dtype))
        with frozen(net.arch_parameters()):
            with autocast(gen.device, gen.precision):
                fake = net(onehot, generator if net.dropout > 0 else None).float()
                # discriminator: real pairs -> 1, generated pairs -> 0
                pred_real = disc(torch.cat([onehot, target], 1)).float()
                pred_fake = disc(torch.cat([onehot, fake.detach()], 1)).float()
            loss_d = 0.5 * (self.adv(pred_real, target_is_real=True, for_discriminator=True)
                            + self.adv(pred_fake, target_is_real=False, for_discriminator=True))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            average_grads(list(disc.parameters()))
            self.opt_d.step()
            # generator: fool the (updated) discriminator and stay close to the real image
            with frozen(list(disc.parameters())):
                loss_g, parts = self.generator_loss(onehot, target, fake, gen.precision)
                self.opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
            average_grads(net.weight_parameters())
            self.opt_g.step()
        if gen.seg_term is not None:
            gen.seg_term.cotrain_step()  # no-op unless seg_cotrain (real pairs only)
        return {"gan_d": float(loss_d.detach()), **parts}

    def state_dict(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
