"""Label maps from per-class scores: ``torch.argmax`` over a short class axis, without its slow CPU reduction.

On CPU, ``t.argmax(dim)`` over an outer axis of a few classes is a strided reduction that does not vectorise:
7.0 ms for (3, 40, 56, 40) and 5.3 ms for (2, 256, 256) on two AVX2 cores, against 0.6 and 0.25 ms for a loop
of elementwise comparisons over the classes (``benchmarks/README.md``, issue 12). Warping a mask (one-hot,
bilinear, argmax) and turning logits into a label map do it on every training step and every prediction, so in a
3D GenSeg run it was 5 % of all the time. ``class_argmax`` gives exactly ``torch.argmax``'s answer (the first
class among equal maxima) for floating scores without NaN.
"""

from __future__ import annotations

import torch

#: above this many classes the loop stops paying; ``torch.argmax`` is used
MAX_LOOP_CLASSES = 16


def class_argmax(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Index of the largest score along ``dim`` (int64, ``dim`` removed), ties to the lowest index.

    The same as ``scores.argmax(dim)`` for floating scores without NaN (where a NaN is, the two may differ).
    On a GPU, for integer tensors, one class or more than ``MAX_LOOP_CLASSES``, ``torch.argmax`` itself is used."""
    k = scores.shape[dim]
    if scores.device.type != "cpu" or not scores.is_floating_point() or k > MAX_LOOP_CLASSES or k < 2:
        return scores.argmax(dim)
    planes = scores.unbind(dim)
    best = planes[0]
    index = torch.zeros(best.shape, dtype=torch.long, device=scores.device)
    for c in range(1, k):
        better = planes[c] > best  # strict: an equal later class does not win (argmax's first maximum)
        index.masked_fill_(better, c)
        best = torch.maximum(best, planes[c])
    return index
