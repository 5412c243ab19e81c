"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017) as a hook of the one training loop.

The teacher is an exponential moving average (EMA) of the student's weights. On each step both see the same
weakly augmented unlabelled batch under independent perturbations (intensity + noise; optionally flips, whose
prediction is flipped back so the two views stay spatially aligned), and the student is pulled towards the
teacher by the mean squared error between their softmax outputs, weighted by a sigmoid ramp-up.
After every update: teacher <- a * teacher + (1 - a) * student, a = min(1 - 1 / (step + 1), decay).
The teacher's weights are the hook's state: they are saved in the training checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from segsynth.data.case import Case
from segsynth.data.transforms import RandomIntensity
from segsynth.errors import ConfigError
from segsynth.generators.semi_supervised.consistency import (
    SemiSupervisedHook,
    apply_flips,
    draw_flips,
    logits_of,
    perturb_intensity,
    sigmoid_rampup,
    unwrap,
)

# independent small perturbations of the two views (noise is the one Tarvainen & Valpola use)
VIEW_PERTURBATION = RandomIntensity(gamma=(0.85, 1.2), contrast=(0.9, 1.1), brightness=0.05, noise_std=0.05)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student for floating tensors; other buffers are copied."""
    s_state = student.state_dict()
    for k, t in teacher.state_dict().items():
        s = s_state[k]
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s.detach().to(t.dtype), alpha=1.0 - alpha)
        else:
            t.copy_(s)


class MeanTeacherHook(SemiSupervisedHook):
    """Consistency with an EMA teacher on unlabelled images.

    Args:
        unlabelled: unlabelled cases (``mask`` ignored).
        spatial_dims, seed, batch_size, patch_size: as the training run (batch_size = unlabelled batch).
        weight: maximum consistency weight (reached after the ramp-up).
        ema_decay: the teacher's EMA decay.
        rampup_steps: steps of the sigmoid ramp-up of the weight.
        flip: also flip the student's view (per sample, every axis, p = 0.5) and flip its prediction back; off by
            default because flips swap left/right labels.
    """

    name = "mean_teacher"

    def __init__(self, unlabelled: Sequence[Case], *, spatial_dims: int, seed: int, batch_size: int,
                 patch_size: Sequence[int] | None = None, weight: float = 1.0, ema_decay: float = 0.99,
                 rampup_steps: int = 0, flip: bool = False):
        super().__init__(unlabelled, spatial_dims=spatial_dims, seed=seed, batch_size=batch_size,
                         patch_size=patch_size, weight=weight, flip=flip)
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"mean_teacher: ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = float(ema_decay)
        self.rampup_steps = int(rampup_steps)
        self.teacher: torch.nn.Module | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    def _ensure_teacher(self, student: torch.nn.Module) -> torch.nn.Module:
        if self.teacher is None:
            self.teacher = copy.deepcopy(student)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if self._pending is not None:
                self.teacher.load_state_dict(self._pending)
                self._pending = None
        return self.teacher

    def unlabelled_loss(self, net: torch.nn.Module, x_u: torch.Tensor, g: torch.Generator, step: int,
                        device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = self._ensure_teacher(unwrap(net))
        x_t = perturb_intensity(x_u, VIEW_PERTURBATION, g)
        x_s = perturb_intensity(x_u, VIEW_PERTURBATION, g)
        flips = draw_flips(len(x_u), range(self.spatial_dims), g) if self.flip else None
        if flips is not None:
            x_s = apply_flips(x_s, flips)
        with torch.no_grad():
            p_t = torch.softmax(logits_of(teacher, x_t), dim=1)
        p_s = torch.softmax(logits_of(net, x_s), dim=1)
        if flips is not None:
            p_s = apply_flips(p_s, flips)
        consistency = torch.mean((p_s - p_t) ** 2)
        w = self.weight * sigmoid_rampup(step, self.rampup_steps)
        return w * consistency, {"mean_teacher_mse": float(consistency.detach()), "mean_teacher_weight": w}

    def after_step(self, state: Any) -> dict[str, float] | None:
        if self.teacher is not None:
            alpha = min(1.0 - 1.0 / (state.step + 1), self.ema_decay)
            ema_update(self.teacher, state.model, alpha)
        return super().after_step(state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return dict(self._pending or {})
        return {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        if self.teacher is not None:
            self.teacher.load_state_dict(state)
        else:
            self._pending = dict(state)
