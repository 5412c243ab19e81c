"""Where training batches come from. The training loop only ever calls ``source.draw(batch_size, generator)``
(or, for a source whose batches change with the step, ``PhasedSource``, ``source.draw_at(step, ...)``).

Real pairs, classical augmentation, synthetic pairs, learned transforms sampled on the fly and GenSeg's
generated images are all PairSources, so every method shares one training loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from segsynth.data.case import Case
from segsynth.errors import DataError


@runtime_checkable
class PairSource(Protocol):
    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (x float (B, C, *S), y long (B, *S)) on the CPU."""


def prefetchable(source: Any) -> bool:
    """Whether ``source.draw`` may run ahead of the training step on another thread.

    Only sources that say so (``prefetchable = True``): a source whose batches depend on something the step
    changes (GenSeg's generator, updated by its hook after each step) must draw on the training thread, or its
    batches would come from stale weights.
    """
    return bool(getattr(source, "prefetchable", False))


def source_statistics(source: Any) -> dict[str, dict[str, Any]]:
    """What the sources of a training stream counted while it was drawn (e.g. ``min_fidelity``'s redraws).

    Walks ``source`` and the streams it wraps (``sources`` of a ``MixedSource``, ``source`` of a wrapper) and
    returns ``{stats_name: source.statistics()}`` for each that has ``statistics``; {} when none counts anything.
    """
    out: dict[str, dict[str, Any]] = {}
    todo, seen = [source], set()
    while todo:
        node = todo.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if callable(getattr(node, "statistics", None)):
            out[str(getattr(node, "stats_name", type(node).__name__))] = node.statistics()
        todo += list(getattr(node, "sources", None) or []) + [getattr(node, "source", None)]
    return out


class CaseSource:
    """Random labelled cases, optionally augmented, optionally cropped to random patches (3D).

    Args:
        cases: labelled cases (mask not None).
        transform: an object with ``draw(spatial_shape, generator)`` and ``apply(image, mask, params,
            num_classes)`` (see segsynth.data.transforms), applied per sample.
        patch_size: random crops of this size (padded when the case is smaller); a third of the crops are
            centred on a foreground voxel, as nnU-Net does, so small structures are seen often enough.
        num_classes: number of classes (for label warping); inferred from the masks when None.
    """

    def __init__(self, cases: Sequence[Case], transform: Any = None, patch_size: Sequence[int] | None = None,
                 num_classes: int | None = None, foreground_fraction: float = 1 / 3):
        cases = [c for c in cases]
        if not cases:
            raise DataError("no training cases to draw from")
        for c in cases:
            if c.mask is None:
                raise DataError("case has no mask; a training source needs labelled cases", c.case_id)
        self.images = [torch.as_tensor(c.image, dtype=torch.float32) for c in cases]
        self.masks = [torch.as_tensor(c.mask, dtype=torch.long) for c in cases]
        self.case_ids = [c.case_id for c in cases]
        self.transform = transform
        self.patch_size = tuple(patch_size) if patch_size else None
        self.num_classes = num_classes or int(max(int(m.max()) for m in self.masks)) + 1
        self.foreground_fraction = foreground_fraction

    prefetchable = True  # fixed cases and transforms: a batch depends only on the generator

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.images), (batch_size,), generator=generator).tolist()
        xs, ys = [], []
        for i in idx:
            x, y = self.images[i], self.masks[i]
            if self.transform is not None:
                params = self.transform.draw(x.shape[1:], generator)
                x, y = self.transform.apply(x, y, params, self.num_classes)
            if self.patch_size is not None:
                x, y = random_patch(x, y, self.patch_size, generator, self.foreground_fraction)
            xs.append(x)
            ys.append(y)
        return collate(xs, ys)


class MixedSource:
    """Draw each sample of a batch from one of several sources with the given weights."""

    def __init__(self, sources: Sequence[tuple[PairSource, float]]):
        if not sources:
            raise ValueError("MixedSource needs at least one source")
        self.sources = [s for s, _ in sources]
        w = torch.tensor([float(w) for _, w in sources])
        self.weights = w / w.sum()
        self.prefetchable = all(prefetchable(s) for s in self.sources)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        choice = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
        xs, ys = [], []
        for k, src in enumerate(self.sources):
            n = int((choice == k).sum())
            if n:
                x, y = src.draw(n, generator)
                xs.extend(x)
                ys.extend(y)
        return collate(xs, ys)


class PhasedSource:
    """A training stream that changes at given steps: ``phases`` = [(first_step, source), ...], the first at
    step 0, e.g. real + synthetic pairs for the first half of a run and the real pairs alone after it
    (``synthetic_until`` in ``segsynth.segment.synthetic_mix``).

    The step is a pure function of a batch's place in the run (the ``Prefetcher`` passes it to ``draw_at``), so
    batches stay deterministic per seed and a resumed run draws from the right phase. ``draw`` (no step) is the
    first phase's.
    """

    def __init__(self, phases: Sequence[tuple[int, PairSource]]):
        starts = [int(s) for s, _ in phases]
        if not phases or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"PhasedSource needs phases starting at step 0 in increasing order, got {starts}")
        self.starts = starts
        self.sources = [src for _, src in phases]
        self.prefetchable = all(prefetchable(s) for s in self.sources)

    def source_at(self, step: int) -> PairSource:
        i = max(k for k, s in enumerate(self.starts) if s <= step)
        return self.sources[i]

    def draw_at(self, step: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source_at(step).draw(batch_size, generator)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sources[0].draw(batch_size, generator)


class Prefetcher:
    """The batches ``source.draw(batch_size, generator)`` would give, ``count`` of them, drawn ahead.

    With ``depth > 0`` (and a ``prefetchable`` source) a daemon thread draws up to ``depth`` batches ahead into a
    bounded queue while the training thread computes; otherwise each batch is drawn when asked for. Either way
    the batches and their order are exactly those of calling ``draw`` in a loop with ``generator``, which the
    prefetcher owns from then on: ``state`` is the generator state just after the last batch handed out, what
    a checkpoint saves so that a resumed run draws the next batch. ``wait_s`` adds up the time the training
    thread spent waiting for batches (drawing them, without prefetching). Use it as a context manager (or call
    ``close``) so the thread stops when training ends early.

    Args:
        start: the training step of the first batch (a resumed run's step): a source with ``draw_at``
            (``PhasedSource``) is given each batch's step.
        pin_memory: pin batches in page-locked memory (for asynchronous copies to a GPU).
    """

    def __init__(self, source: PairSource, batch_size: int, generator: torch.Generator, count: int,
                 depth: int = 2, pin_memory: bool = False, start: int = 0):
        from segsynth.utils.read_ahead import ReadAhead

        self.source, self.batch_size, self.generator = source, int(batch_size), generator
        self.count, self.pin_memory = int(count), bool(pin_memory)
        self.depth = int(depth) if prefetchable(source) else 0
        self.state = generator.get_state()
        self.wait_s = 0.0
        draws = (self._draw(int(start) + i) for i in range(self.count))
        self._batches = ReadAhead(draws, self.depth if self.count > 0 else 0, name="segsynth-prefetch")

    @property
    def _thread(self) -> threading.Thread | None:
        return self._batches.thread

    def _draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if hasattr(self.source, "draw_at"):
            x, y = self.source.draw_at(step, self.batch_size, self.generator)
        else:
            x, y = self.source.draw(self.batch_size, self.generator)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y, self.generator.get_state()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        x, y, state = next(self._batches)
        self.wait_s += time.perf_counter() - t0
        self.state = state
        return x, y

    def close(self) -> None:
        self._batches.close()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def collate(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples; differently sized 3D samples are padded to the largest (image min, background 0)."""
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        target = tuple(max(s[d] for s in shapes) for d in range(len(next(iter(shapes)))))
        xs = [pad_to(x, target, float(x.min())) for x in xs]
        ys = [pad_to(y[None], target, 0)[0] for y in ys]
    return torch.stack(list(xs)).float(), torch.stack(list(ys)).long()


def pad_to(t: torch.Tensor, shape: Sequence[int], value: float) -> torch.Tensor:
    """Pad a (C, *S) tensor at the end of each spatial axis up to ``shape``."""
    pads: list[int] = []
    for have, want in reversed(list(zip(t.shape[1:], shape))):
        pads += [0, max(0, want - have)]
    if not any(pads):
        return t
    return F.pad(t, pads, value=value)


def random_patch(x: torch.Tensor, y: torch.Tensor, size: Sequence[int], generator: torch.Generator,
                 foreground_fraction: float = 1 / 3) -> tuple[torch.Tensor, torch.Tensor]:
    size = tuple(size)
    x = pad_to(x, [max(a, b) for a, b in zip(x.shape[1:], size)], float(x.min()))
    y = pad_to(y[None], [max(a, b) for a, b in zip(y.shape, size)], 0)[0]
    starts = []
    fg = None
    if torch.rand((), generator=generator).item() < foreground_fraction:
        fg = torch.nonzero(y > 0)
    if fg is not None and len(fg):
        centre = fg[int(torch.randint(len(fg), (), generator=generator))]
        for d, s in enumerate(size):
            lo = int(np.clip(int(centre[d]) - s // 2, 0, y.shape[d] - s))
            starts.append(lo)
    else:
        for d, s in enumerate(size):
            starts.append(int(torch.randint(y.shape[d] - s + 1, (), generator=generator)))
    sl = tuple(slice(a, a + s) for a, s in zip(starts, size))
    return x[(slice(None),) + sl], y[sl]
