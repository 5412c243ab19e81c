import json

import pytest
import torch

from segsynth.data.mask_augment import MaskAugment, augment_masks, shear_from_degrees
from segsynth.errors import ConfigError
from segsynth.segment.sources import CaseSource
from tests.conftest import make_blob_case


def _mask(shape, classes=(1, 2)):
    """Nested boxes: class classes[0] outside, classes[1] inside (class 1 absent when classes=(2,))."""
    m = torch.zeros(shape, dtype=torch.long)
    m[tuple(slice(s // 4, 3 * s // 4) for s in shape)] = classes[0]
    if len(classes) > 1:
        m[tuple(slice(s // 3, s // 2 + 1) for s in shape)] = classes[1]
    return m


@pytest.mark.parametrize("shape", [(32, 28), (12, 14, 16)])
@pytest.mark.parametrize("classes", [(1,), (1, 2)])
def test_shapes_labels_and_reproducible_draws(shape, classes):
    aug = MaskAugment()
    m = _mask(shape, classes)
    k = max(classes) + 1
    params = aug.draw(shape, torch.Generator().manual_seed(0))
    json.dumps(params)  # the draw is a plain record
    out = aug.apply_mask(m, params, k)
    assert out.shape == m.shape and out.dtype == torch.long
    assert set(out.unique().tolist()) <= set(m.unique().tolist())
    assert torch.equal(out, aug.apply_mask(m, params, k))  # applying a record is deterministic
    again = aug.draw(shape, torch.Generator().manual_seed(0))
    assert again == params
    others = [aug.draw(shape, torch.Generator().manual_seed(s)) for s in range(1, 6)]
    assert all(o != params for o in others)
    assert not all(torch.equal(aug.apply_mask(m, o, k), m) for o in others)


def test_no_interpolated_label_between_distant_classes():
    """Classes 0 and 2 touch; a linear warp of the raw values would create 1 on their border."""
    aug = MaskAugment(elastic_prob=1.0)
    m = _mask((40, 40), classes=(2,))
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        out, _ = aug(m, g, num_classes=3)
        assert set(out.unique().tolist()) <= {0, 2}
    m3 = _mask((12, 12, 12), classes=(2,))
    out, _ = aug(m3, g, num_classes=3)
    assert set(out.unique().tolist()) <= {0, 2}


def test_each_part_does_what_it_says():
    m = _mask((32, 32))
    fixed = dict(rotate_deg=0.0, scale=(1.0, 1.0), translate=0.0, shear=0.0, crop_pad=0.0, elastic_alpha=0.0)
    g = torch.Generator().manual_seed(0)
    # flip: left-right only by default, exact
    flip = MaskAugment(**fixed, flip_prob=1.0)
    out, p = flip(m, g, 3)
    assert p["spatial"]["flip"] == [1] and torch.equal(out, m.flip(1))
    # identity settings leave the mask unchanged; p=0 returns the identity record
    assert torch.equal(MaskAugment(**fixed, flip_prob=0.0)(m, g, 3)[0], m)
    assert MaskAugment(p=0.0).draw(m.shape, g) == {"identity": True}
    # padding (zoom out) shrinks the foreground, cropping (zoom in) enlarges it
    pad = {"identity": False, "spatial": {"identity": True}, "crop_pad": [[0.1, 0.1], [0.1, 0.1]]}
    crop = {"identity": False, "spatial": {"identity": True}, "crop_pad": [[-0.1, -0.1], [-0.1, -0.1]]}
    area = int((m > 0).sum())
    assert int((flip.apply_mask(m, pad, 3) > 0).sum()) < area < int((flip.apply_mask(m, crop, 3) > 0).sum())
    # scale 0.8-1.2, crop/pad off: the area changes by a factor in about [0.64, 1.44] (+ pixel rounding)
    aug = MaskAugment(**{**fixed, "scale": (0.8, 1.2)}, flip_prob=0.0)
    for s in range(5):
        a = int((aug(m, torch.Generator().manual_seed(s), 3)[0] > 0).sum())
        assert 0.5 * area < a < 1.7 * area


def test_image_and_mask_move_together():
    case = make_blob_case("c", (32, 32), seed=1)
    img, mask = torch.as_tensor(case.mask, dtype=torch.float32)[None], torch.as_tensor(case.mask)
    aug = MaskAugment(elastic_prob=1.0)
    params = aug.draw(mask.shape, torch.Generator().manual_seed(5))
    wi, wm = aug.apply(img, mask, params, 2)
    assert wi.shape == img.shape
    agree = ((wi[0] > 0.5).long() == wm).float().mean()
    assert agree > 0.97
    # and it plugs into the training sources like the classical transforms
    x, y = CaseSource([case], transform=aug).draw(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 32, 32) and y.shape == (3, 32, 32)


def test_augment_masks_and_options():
    masks = [_mask((16, 16)), _mask((16, 16), (1,))]
    out, draws = augment_masks(masks, MaskAugment(), torch.Generator().manual_seed(0), 3)
    assert len(out) == len(draws) == 2
    aug = MaskAugment.from_options({"flip_axes": [], "scale": [0.9, 1.1]})
    assert aug.flip_axes == () and aug.scale == (0.9, 1.1)
    assert MaskAugment.from_options(aug.to_json()) == aug
    assert shear_from_degrees(8) == pytest.approx(0.1405, abs=1e-3)
    with pytest.raises(ConfigError, match="unknown mask augmentation"):
        MaskAugment.from_options({"rotation": 10})
    with pytest.raises(ConfigError):
        MaskAugment(scale=(1.2, 0.8))
    with pytest.raises(ConfigError):
        MaskAugment(crop_pad=0.6)
    with pytest.raises(ConfigError, match="flip_axes"):
        MaskAugment(flip_axes=(2,)).draw((8, 8), torch.Generator())
