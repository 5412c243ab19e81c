"""The frame every generator training loop shares: steps from a checkpoint, progress bar, timing, autocast.

A generator's ``fit`` keeps its own loop body (what one step computes is the method); ``FitLoop`` holds what
the loops of brainSPADE, GenSeg and the learned transforms all repeat around it:

    loop = FitLoop("label diffusion", steps, progress=True, stage=stage, device=dev)   # stage: optional
    for step in loop:                       # range(stage.start, steps), with a progress bar
        with loop.autocast():               # fp32 by default (precision=None): a no-op
            loss = ...
        optimizer_step(opt, loss)           # zero_grad, backward, step
        loop.done(step, {"mse": f"{loss:.4f}"}, losses=losses)   # bar + checkpoint every ``every`` steps
    loop.seconds                            # wall time of the loop

Seeding stays with the caller (``segsynth.utils.seed.torch_generator(derive_seed(seed, ...))``): each loop
draws from its own ``torch.Generator``, which the stage checkpoint saves and restores.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from segsynth.generators.fit_checkpoint import StageCheckpoint
from segsynth.utils.precision import autocast, resolve_precision
from segsynth.utils.progress import progress_bar  # the loops' bar (terminal only); FitLoop looks it up here


def tail_mean(values: Sequence[float]) -> float:
    """Mean of the last tenth of a loss history (NaN when empty)."""
    tail = list(values)[-max(1, len(values) // 10):]
    return float(np.mean(tail)) if tail else float("nan")


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One plain optimisation step: clear the gradients, backpropagate ``loss``, update."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


class FitLoop:
    """One training loop of a generator: iterate ``for step in loop``, then ``loop.done(step, ...)`` per step.

    Args:
        desc: name on the progress bar.
        steps: total steps of the loop.
        progress: show the progress bar (on a terminal only: ``segsynth.utils.progress``).
        stage: checkpoint of this loop (``FitCheckpoint.stage``): the loop starts at ``stage.start`` and
            ``done`` saves through ``stage.after_step``; None: start at 0, nothing saved.
        device: where the loop computes (for ``autocast``).
        precision: autocast dtype, or a precision name (fp32 / bf16 / auto) resolved for ``device``
            (``segsynth.utils.precision.resolve_precision``); None = fp32, no autocast.
    """

    def __init__(self, desc: str, steps: int, *, progress: bool = False, stage: StageCheckpoint | None = None,
                 device: torch.device | str = "cpu", precision: torch.dtype | str | None = None):
        self.desc, self.steps, self.progress, self.stage = desc, int(steps), bool(progress), stage
        self.device = device
        self.precision = resolve_precision(precision, device) if isinstance(precision, str) else precision
        self.start = stage.start if stage is not None else 0
        self.seconds = 0.0
        self.bar: tqdm | None = None

    def __iter__(self) -> Iterator[int]:
        t0 = time.perf_counter()
        self.bar = progress_bar(self.steps, self.desc, self.progress, initial=self.start)
        try:
            yield from range(self.start, self.steps)
        finally:
            self.bar.close()
            self.seconds = time.perf_counter() - t0

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Autocast to ``precision`` on the loop's device (a no-op for fp32)."""
        return autocast(self.device, self.precision)

    def done(self, step: int, postfix: Mapping[str, str] | None = None, **extras: Any) -> None:
        """Step ``step`` (0-based) finished: advance the bar, then checkpoint (``extras``: JSON-able state)."""
        assert self.bar is not None, "call done() inside `for step in loop`"
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix)
        if self.stage is not None:
            self.stage.after_step(step + 1, self.steps, **extras)


__all__ = ["FitLoop", "optimizer_step", "progress_bar", "tail_mean"]
