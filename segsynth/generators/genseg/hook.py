"""GenSeg stages I and III inside the segmenter's training loop: the hook that updates W and alpha."""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from segsynth.generators.genseg.gan import GanTrainer
from segsynth.generators.genseg.generator import GenSegGenerator
from segsynth.generators.genseg.helpers import average_grads, rank
from segsynth.generators.genseg.hypergradient import (
    UnrolledProblem,
    architecture_hypergradient,
)
from segsynth.generators.genseg.options import GenSegOptions, Params
from segsynth.generators.genseg.sources import AugmentedMasks
from segsynth.segment.sources import CaseSource, collate
from segsynth.segment.train import (
    StepState,
)
from segsynth.utils.seed import derive_seed, torch_generator


class GenSegHook:
    """Couples stages I and III to the segmenter's training loop (``train_segmenter(..., hooks=[hook])``).

    After segmenter step t: a GAN update of W when ``t % gen_every == 0``; an architecture update of alpha
    with the unrolled hypergradient when ``t % arch_every == 0`` (with ``weight_feedback``, the same hypergradient
    also updates the generator weights W, with their own Adam). ``state_dict`` holds generator,
    discriminator, optimisers and random state, so a resumed run continues exactly. With ``until`` (the
    number of first steps whose batches hold generated pairs, ``synthetic_until``), nothing is updated from
    that step on: the segmenter no longer sees the generator's pairs.
    """

    def __init__(self, gen: GenSegGenerator, real: CaseSource, masks: AugmentedMasks, val: CaseSource,
                 opts: GenSegOptions, seed: int = 0, feedback: bool = True, gan_real: CaseSource | None = None,
                 until: int | None = None):
        self.gen = gen
        self.until = None if until is None else int(until)
        self.real = real
        self.gan_real = gan_real if gan_real is not None else real
        self.masks = masks
        self.val = val
        self.opts = opts
        self.feedback = feedback
        self.gan = GanTrainer(gen)
        net = gen.require_net()
        self.arch_opt = (torch.optim.Adam(net.arch_parameters(), lr=opts.arch_lr, betas=(0.5, 0.999),
                                          weight_decay=opts.arch_weight_decay)
                         if feedback and opts.search and net.searchable else None)
        self.wf_opt = (torch.optim.Adam(net.weight_parameters(), lr=opts.weight_feedback_lr, betas=(0.5, 0.999))
                       if feedback and opts.weight_feedback else None)
        self.rng = torch_generator(derive_seed(seed, "genseg-hook", rank()))
        self.arch_interval = int(opts.arch_every)  # adaptive schedule (arch_every_max): current interval
        self.next_arch = int(opts.arch_every)      # and the step of the next architecture update

    @property
    def adaptive(self) -> bool:
        return self.opts.arch_every_max > self.opts.arch_every

    def _arch_due(self, step: int) -> bool:
        return step >= self.next_arch if self.adaptive else step % self.opts.arch_every == 0

    def _reschedule(self, step: int, before: list[torch.Tensor]) -> float:
        """After an update at ``step``: double the interval when softmax(alpha) hardly moved, else reset it."""
        mix = self.gen.require_net().mixture_weights()
        moved = max((float((b - a.detach()).abs().max()) for b, a in zip(before, mix or ())), default=0.0)
        settled = moved < self.opts.arch_settle_tol
        self.arch_interval = (min(2 * self.arch_interval, self.opts.arch_every_max) if settled
                              else self.opts.arch_every)
        self.next_arch = step + self.arch_interval
        return moved

    def after_step(self, state: StepState) -> dict[str, float]:
        rec: dict[str, float] = {}
        if self.until is not None and state.step >= self.until:  # later batches are real pairs only
            return rec
        if self.opts.gen_every and state.step % self.opts.gen_every == 0:
            x, y = self.gan_real.draw(self.opts.gen_batch_size, self.rng)
            rec.update(self.gan.step(x, y, self.rng))
        hyper = self.arch_opt is not None or self.wf_opt is not None
        if hyper and self._arch_due(state.step) and state.lr > 0:
            mix = self.gen.require_net().mixture_weights() if self.adaptive else None
            before = [m.detach().clone() for m in mix] if mix is not None else []
            rec.update(self.arch_step(state.model, state.lr, state.device))
            if self.adaptive:
                rec["arch_moved"] = self._reschedule(state.step, before)
                rec["arch_interval"] = float(self.arch_interval)
        return rec

    def problem(self, segmenter: torch.nn.Module, lr: float, device: torch.device) -> UnrolledProblem:
        """Draw the batches of one hyper-step and wrap them as an ``UnrolledProblem``."""
        gen, net, opts = self.gen, self.gen.require_net(), self.opts
        b = opts.arch_batch_size
        masks, _ = self.masks.draw(b, self.rng)
        syn_y = collate([torch.zeros(1, *m.shape) for m in masks], masks)[1].to(device)
        real_x, real_y = (t.to(device) for t in self.real.draw(b, self.rng))
        val_x, val_y = (t.to(device) for t in self.val.draw(b, self.rng))
        drop_seed = int(torch.randint(0, 2**31 - 1, (), generator=self.rng))
        use_drop = net.dropout > 0

        def synthesize(weights: Params | None) -> torch.Tensor:
            g = torch_generator(drop_seed) if use_drop else None
            return gen.generate(syn_y, generator=g, weights=weights)

        generator_loss = None
        weights: dict[str, torch.nn.Parameter] = {}
        if opts.unroll_generator:
            gx, gy = self.gan_real.draw(opts.gen_batch_size, self.rng)
            onehot = gen.encode(gy)
            target = gen.to_unit(gx.to(gen.device, onehot.dtype))
            gan_seed = int(torch.randint(0, 2**31 - 1, (), generator=self.rng))
            weights = dict(net.named_weight_parameters())

            def generator_loss(w: Params | None) -> torch.Tensor:
                g = torch_generator(gan_seed) if use_drop else None
                fake = net(onehot, g) if w is None else functional_call(net, w, (onehot,), {"generator": g})
                return self.gan.generator_loss(onehot, target, fake)[0]

        return UnrolledProblem(segmenter=segmenter, synthesize=synthesize, syn_y=syn_y, val_x=val_x, val_y=val_y,
                               xi=float(lr), real_x=real_x, real_y=real_y, syn_weight=opts.synthetic_fraction,
                               generator_loss=generator_loss, generator_weights=weights, eta=opts.gen_lr)

    def arch_step(self, segmenter: torch.nn.Module, lr: float, device: torch.device) -> dict[str, float]:
        """One stage-III update of alpha (and of W with ``weight_feedback``); returns the unrolled validation
        loss and the norm of the hypergradient (of alpha; of W as ``wf_grad_norm``)."""
        assert self.arch_opt is not None or self.wf_opt is not None
        net = self.gen.require_net()
        arch = net.arch_parameters() if self.arch_opt is not None else []
        weights = net.weight_parameters() if self.wf_opt is not None else []
        if self.gen.disc is not None:
            self.gen.disc.eval()
        hg = architecture_hypergradient(self.problem(segmenter, lr, device), arch + weights,
                                        mode=self.opts.hypergradient, eps=self.opts.fd_eps)
        rec = {"arch_val_loss": hg.val_loss}
        for params, grads, opt, key in ((arch, hg.grads[:len(arch)], self.arch_opt, "arch_grad_norm"),
                                        (weights, hg.grads[len(arch):], self.wf_opt, "wf_grad_norm")):
            if opt is None:
                continue
            opt.zero_grad(set_to_none=True)
            for a, g in zip(params, grads):
                a.grad = g.to(a.dtype)
            average_grads(params)
            opt.step()
            opt.zero_grad(set_to_none=True)
            rec[key] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        return rec

    def state_dict(self) -> dict[str, Any]:
        gen = self.gen
        assert gen.net is not None and gen.disc is not None
        return {"net": gen.net.state_dict(), "disc": gen.disc.state_dict(), "gan": self.gan.state_dict(),
                "arch_opt": self.arch_opt.state_dict() if self.arch_opt is not None else {},
                "wf_opt": self.wf_opt.state_dict() if self.wf_opt is not None else {},
                "seg_term": gen.seg_term.state_dict() if gen.seg_term is not None else {},
                "rng": self.rng.get_state(), "arch_schedule": [self.arch_interval, self.next_arch]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gen = self.gen
        assert gen.net is not None and gen.disc is not None
        gen.net.load_state_dict(state["net"])
        gen.disc.load_state_dict(state["disc"])
        self.gan.load_state_dict(state["gan"])
        if self.arch_opt is not None and state.get("arch_opt"):
            self.arch_opt.load_state_dict(state["arch_opt"])
        if self.wf_opt is not None and state.get("wf_opt"):
            self.wf_opt.load_state_dict(state["wf_opt"])
        if gen.seg_term is not None and state.get("seg_term"):
            gen.seg_term.load_state_dict(state["seg_term"])
        self.rng.set_state(state["rng"])
        if "arch_schedule" in state:
            self.arch_interval, self.next_arch = (int(v) for v in state["arch_schedule"])
