"""Single-atlas segmentation."""

from __future__ import annotations

import torch

from segsynth.generators.learned_transforms import (
    AtlasSegmenter,
)


def test_atlas_segmenter_returns_the_atlas_labels_on_the_atlas(fitted_2d):
    t, _, cases = fitted_2d
    seg = AtlasSegmenter(t).eval()
    with torch.no_grad():
        logits = seg(torch.as_tensor(cases[0].image)[None])
        pred = logits.argmax(1)[0].numpy()
        assert (pred == cases[0].mask).mean() > 0.95
        other = seg(torch.randn(2, 1, 28, 36))  # another size: centre fitted and mapped back
    assert other.shape == (2, 3, 28, 36)
