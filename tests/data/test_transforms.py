import json

import pytest
import torch

from segsynth.data.transforms import AUGMENTATIONS, RandomSpatial, classical_augmentation
from segsynth.errors import ConfigError


def _pair(shape):
    g = torch.Generator().manual_seed(1)
    img = torch.randn((1, *shape), generator=g)
    mask = torch.zeros(shape, dtype=torch.long)
    sl = tuple(slice(s // 4, 3 * s // 4) for s in shape)
    mask[sl] = 1
    mask[tuple(slice(s // 3, s // 2) for s in shape)] = 2
    return img, mask


@pytest.mark.parametrize("kind", AUGMENTATIONS)
@pytest.mark.parametrize("shape", [(24, 32), (10, 12, 14)])
def test_shapes_labels_and_reproducibility(kind, shape):
    aug = classical_augmentation(kind, len(shape), flip=True)
    img, mask = _pair(shape)
    params = aug.draw(shape, torch.Generator().manual_seed(3))
    json.dumps(params)  # what was drawn is a plain record
    a, b = aug.apply(img, mask, params)
    a2, b2 = aug.apply(img, mask, params)
    assert a.shape == img.shape and b.shape == mask.shape
    assert set(b.unique().tolist()) <= {0, 1, 2}  # no interpolated label values
    assert torch.equal(a, a2) and torch.equal(b, b2)
    others = [aug.draw(shape, torch.Generator().manual_seed(s)) for s in range(4, 12)]
    assert any(o != params for o in others)


def test_rotation_and_flip_are_exact():
    t = RandomSpatial()
    img = torch.arange(16.0).reshape(1, 4, 4)
    base = {"identity": False, "rotate_deg": [90.0], "scale": 1.0, "translate": [0, 0], "shear": [0, 0], "flip": []}
    rot = t.apply(img, None, base)[0]
    assert torch.allclose(rot, torch.rot90(img, 1, dims=(1, 2)).flip(1).flip(2).rot90(2, dims=(1, 2)), atol=1e-4) or \
        torch.allclose(rot.round(), torch.rot90(img, -1, dims=(1, 2)), atol=1e-4)
    flipped = t.apply(img, None, {**base, "rotate_deg": [0.0], "flip": [1]})[0]
    assert torch.allclose(flipped, img.flip(2), atol=1e-4)


def test_mask_follows_image():
    """A mask drawn from the image (threshold) stays aligned with the image after a spatial transform."""
    shape = (32, 32)
    img = torch.zeros(1, *shape)
    img[0, 8:20, 10:26] = 1.0
    mask = (img[0] > 0.5).long()
    aug = RandomSpatial(rotate_deg=20, scale=(0.9, 1.1), translate=0.1, elastic_alpha=0.02)
    p = aug.draw(shape, torch.Generator().manual_seed(0))
    a, b = aug.apply(img, mask, p)
    agree = ((a[0] > 0.5).long() == b).float().mean()
    assert agree > 0.97


def test_unknown_kind():
    with pytest.raises(ConfigError):
        classical_augmentation("mixup")
