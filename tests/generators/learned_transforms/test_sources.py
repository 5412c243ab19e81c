"""Learned-transform pairs drawn on the fly."""

from __future__ import annotations

import torch

from segsynth.generators.learned_transforms import (
    LearnedSource,
    RandAug,
)
from segsynth.utils.seed import torch_generator


def test_learned_source_batches_with_rand_aug_and_patches(fitted_2d):
    t, _, _ = fitted_2d
    x, y = LearnedSource(t, rand_aug=RandAug()).draw(3, torch_generator(0))
    assert x.shape == (3, 1, 32, 32) and y.shape == (3, 32, 32) and y.dtype == torch.long
    x, y = LearnedSource(t, patch_size=(16, 16)).draw(2, torch_generator(0))
    assert x.shape == (2, 1, 16, 16) and y.shape == (2, 16, 16)
