import numpy as np
import pytest
import torch

from segsynth.nets.segmenters import build_segmenter
from segsynth.segment import inference
from segsynth.segment.inference import predict, predict_logits, predict_many


def test_pads_odd_sizes_and_crops_back():
    torch.manual_seed(0)
    m = build_segmenter("unet", 2, 1, 3, features=(8, 8, 16, 16, 32, 8)).eval()
    img = np.random.default_rng(0).standard_normal((1, 37, 45)).astype(np.float32)
    pred = predict(m, img, 3)
    assert pred.shape == (37, 45) and pred.dtype == np.int64


def test_sliding_window_matches_whole_volume_roughly():
    torch.manual_seed(0)
    m = build_segmenter("unet", 3, 1, 2, features=(4, 4, 8, 8, 16, 4)).eval()
    x = torch.randn(1, 1, 48, 32, 32)
    whole = predict_logits(m, x)
    windowed = predict_logits(m, x, patch_size=(48, 32, 32))
    assert torch.allclose(whole, windowed, atol=1e-4)
    assert predict_logits(m, x, patch_size=(32, 32, 32)).shape == whole.shape


@pytest.mark.parametrize("name", ["unet", "deeplab"])  # instance norm; batch norm (running statistics in eval)
def test_predict_many_gives_what_predict_gives_one_by_one(name, monkeypatch):
    """Images of one shape go through the network together (here at most 3 per pass), in order; other shapes
    and the model's train/eval mode are kept."""
    torch.manual_seed(0)
    m = build_segmenter(name, 2, 1, 3)
    rng = np.random.default_rng(0)
    shapes = [(40, 48)] * 4 + [(37, 45)] * 2 + [(40, 48)]
    images = [rng.standard_normal((1, *s)).astype(np.float32) for s in shapes]
    calls = []
    real = inference.predict_logits
    monkeypatch.setattr(inference, "predict_logits", lambda model, x, patch=None: calls.append(len(x)) or
                        real(model, x, patch))
    many = predict_many(m, images, batch_voxels=3 * 40 * 48)
    assert calls == [3, 1, 2, 1] and m.training  # grouped by consecutive shape, capped; mode restored
    one = [predict(m, im, 3) for im in images]
    assert [p.shape for p in many] == [p.shape for p in one] and all(p.dtype == np.int64 for p in many)
    # equal up to float rounding of other kernel blocking: a label may flip where two logits (nearly) tie
    agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(many, one)]))
    assert agree > 0.999


def test_predict_many_slides_a_window_over_volumes_larger_than_the_patch():
    torch.manual_seed(0)
    m = build_segmenter("unet", 3, 1, 2, features=(4, 4, 8, 8, 16, 4)).eval()
    vols = [np.random.default_rng(i).standard_normal((1, 48, 32, 32)).astype(np.float32) for i in range(2)]
    for patch in ((32, 32, 32), (48, 32, 32)):  # windowed one by one; the whole volume fits: batched
        many = predict_many(m, vols, patch_size=patch)
        one = [predict(m, v, 2, patch_size=patch) for v in vols]
        assert all(np.mean(a == b) > 0.999 for a, b in zip(many, one)) and many[0].shape == (48, 32, 32)
