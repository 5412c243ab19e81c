import numpy as np
import torch

from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.inference import predict, predict_logits


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
