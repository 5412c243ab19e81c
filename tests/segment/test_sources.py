import torch

from segsynth.data.transforms import classical_augmentation
from segsynth.segment.sources import CaseSource, MixedSource, random_patch
from tests.conftest import make_blob_case


def test_case_source_batches_and_determinism(blob_cases_2d):
    src = CaseSource(blob_cases_2d, transform=classical_augmentation("combined", 2))
    x1, y1 = src.draw(4, torch.Generator().manual_seed(0))
    x2, y2 = src.draw(4, torch.Generator().manual_seed(0))
    assert x1.shape == (4, 1, 32, 32) and y1.shape == (4, 32, 32) and y1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_patches_3d_pad_small_volumes_and_find_foreground():
    c = make_blob_case("v", (10, 12, 14), seed=1)
    src = CaseSource([c], patch_size=(16, 16, 8), foreground_fraction=1.0)
    x, y = src.draw(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 16, 16, 8) and y.shape == (3, 16, 16, 8)
    assert (y.flatten(1) > 0).any(1).all()  # foreground-centred crops contain foreground


def test_random_patch_inside_bounds():
    x = torch.randn(1, 20, 20)
    y = torch.zeros(20, 20, dtype=torch.long)
    for s in range(10):
        px, py = random_patch(x, y, (8, 8), torch.Generator().manual_seed(s))
        assert px.shape == (1, 8, 8)


def test_mixed_source_uses_both(blob_cases_2d):
    a = CaseSource(blob_cases_2d[:2])
    b = CaseSource(blob_cases_2d[2:])
    src = MixedSource([(a, 1.0), (b, 1.0)])
    x, y = src.draw(32, torch.Generator().manual_seed(0))
    assert x.shape[0] == 32
