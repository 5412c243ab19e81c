"""The rand-aug baseline."""

from __future__ import annotations

import json

import torch

from segsynth.generators.learned_transforms import (
    RandAug,
)
from segsynth.utils.seed import torch_generator
from tests.conftest import make_blob_case


def test_rand_aug_is_reproducible_from_its_params():
    case = make_blob_case("a", (24, 24), num_classes=3)
    ra = RandAug(displacement=0.08)
    params = ra.draw((24, 24), torch_generator(0))
    img, mask = torch.as_tensor(case.image), torch.as_tensor(case.mask)
    x1, y1 = ra.apply(img, mask, params, 3)
    x2, y2 = ra.apply(img, mask, json.loads(json.dumps(params)), 3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert set(y1.unique().tolist()) <= set(mask.unique().tolist()) and not torch.equal(y1, mask)
