"""The classical-augmentation baselines: every kind is a sweep method and changes what it should."""

import numpy as np
import pytest
import torch

from segsynth.data.case import DatasetInfo
from segsynth.generators import METHODS, get_method
from segsynth.generators.base import MethodContext
from tests.conftest import make_blob_case

KINDS = ["augment_rotate", "augment_flip", "augment_translate", "augment_elastic", "augment_intensity"]


def _ctx(dims: int = 2) -> MethodContext:
    shape = (24, 24) if dims == 2 else (12, 12, 12)
    cases = [make_blob_case(f"c{i}", shape, num_classes=3, seed=i) for i in range(3)]
    info = DatasetInfo("blobs", {0: "background", 1: "a", 2: "b"}, "other", dims, 1)
    return MethodContext(info=info, train=cases, val=cases[:1])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", KINDS + ["augment", "none"])
def test_each_baseline_draws_valid_pairs(name, dims):
    assert name in METHODS
    ctx = _ctx(dims)
    source = get_method(name).training_source(ctx)
    x, y = source.draw(6, torch.Generator().manual_seed(0))
    assert x.shape[0] == 6 and x.shape[2:] == y.shape[1:] and x.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}  # labels stay in the label set (no interpolation)
    assert torch.isfinite(x).all()


def test_spatial_kinds_move_masks_and_intensity_kind_keeps_them():
    ctx = _ctx()
    real = {c.case_id: c for c in ctx.train}

    def changed(name: str) -> tuple[float, float]:
        """Fraction of drawn pairs whose mask / image differs from every real case."""
        x, y = get_method(name).training_source(ctx).draw(12, torch.Generator().manual_seed(1))
        mask_changed = img_changed = 0
        for xi, yi in zip(x, y):
            mask_changed += all(not np.array_equal(yi.numpy(), c.mask) for c in real.values())
            img_changed += all(not np.allclose(xi.numpy(), c.image, atol=1e-6) for c in real.values())
        return mask_changed / len(x), img_changed / len(x)

    assert changed("none") == (0.0, 0.0)
    for name in ("augment_rotate", "augment_translate", "augment_elastic"):
        mask_frac, _ = changed(name)
        assert mask_frac > 0.5, name
    mask_frac, img_frac = changed("augment_intensity")
    assert mask_frac == 0.0 and img_frac > 0.5
