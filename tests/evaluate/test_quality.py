"""FID-like distance and diversity with a frozen random encoder (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsynth.data.case import Case
from segsynth.errors import DataError
from segsynth.evaluate.quality import (
    RandomConvEncoder,
    SegmenterEncoder,
    diversity,
    extract_features,
    frechet_distance,
    grid_energy,
    grid_report,
    pairwise_ssim,
    quality_report,
)
from tests.conftest import make_blob_case


def _cases(prefix: str, seeds, shape=(32, 32)):
    return [make_blob_case(f"{prefix}{s}", shape, num_classes=3, seed=s) for s in seeds]


def test_random_encoder_is_deterministic_and_frozen():
    x = torch.randn(3, 1, 32, 32)
    a, b = RandomConvEncoder(seed=3), RandomConvEncoder(seed=3)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), RandomConvEncoder(seed=4)(x))
    assert all(not p.requires_grad for p in a.parameters())
    assert a(x).shape == (3, 2 * (8 + 16 + 32))
    assert RandomConvEncoder(spatial_dims=3, in_channels=2)(torch.randn(2, 2, 8, 8, 8)).shape[0] == 2


def test_fid_ranks_a_distorted_set_worse_and_is_near_floor_for_same_distribution():
    real = _cases("r", range(30))
    same = _cases("s", range(100, 130))
    rng = np.random.default_rng(0)
    distorted = [Case(c.case_id, (c.image * 0.3 + 0.5 * rng.standard_normal(c.image.shape)).astype(np.float32),
                      c.mask) for c in same]
    good = quality_report(real, same, n_pairs=50)
    bad = quality_report(real, distorted, n_pairs=50)
    assert good["fid"] < bad["fid"]
    assert good["fid"] < 3 * good["fid_real_halves"] + 1.0
    for key in ("diversity_real", "diversity_synthetic", "ssim_real", "ssim_synthetic", "diversity_ratio"):
        assert np.isfinite(good[key])
    assert "random-conv" in good["encoder"]


def test_diversity_detects_mode_collapse():
    real = _cases("r", range(30))
    collapsed = [Case(f"c{i}", real[0].image.copy(), real[0].mask) for i in range(30)]
    rep = quality_report(real, collapsed, n_pairs=50)
    assert rep["diversity_synthetic"] == pytest.approx(0.0, abs=1e-6)
    assert rep["diversity_ratio"] < 0.01
    assert rep["ssim_synthetic"] == pytest.approx(1.0, abs=1e-4)
    assert pairwise_ssim(real) < 0.99


def test_frechet_distance_of_identical_features_is_zero():
    f = torch.randn(50, 8)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert diversity(f) > 0


def test_segmenter_encoder_gives_features():
    from segsynth.nets.segmenters import build_segmenter

    model = build_segmenter("unet", 2, 1, 3, features=(4, 4, 8, 8, 8, 4))
    enc = SegmenterEncoder(model)
    feats = extract_features(_cases("r", range(3)), enc)
    assert feats.shape[0] == 3 and torch.isfinite(feats).all()
    assert "conv_0" in enc.description


def _upsampled(mode: str, factor: int = 8, n: int = 6, size: int = 64) -> torch.Tensor:
    coarse = torch.rand(n, 1, size // factor, size // factor, generator=torch.Generator().manual_seed(0))
    fine = torch.nn.functional.interpolate(coarse, scale_factor=factor, mode=mode)
    return fine + 0.01 * torch.rand(fine.shape, generator=torch.Generator().manual_seed(1))


def test_grid_energy_finds_nearest_blocks_at_their_size_only():
    blocks, smooth = _upsampled("nearest"), _upsampled("bilinear")
    assert grid_energy(blocks, 8) > 5  # steps only across the 8-pixel cells' edges
    assert grid_energy(blocks, 16) > 5  # every 16-pixel line is also an 8-pixel line
    assert 0.8 < grid_energy(smooth, 8) < 1.25
    assert 0.8 < grid_energy(_cases("r", range(4), shape=(64, 64)), 8) < 1.25  # blob images: no grid
    report = grid_report(smooth, blocks)
    assert report["periods"] == [2, 4, 8, 16]
    assert report["synthetic"][2] > 5 > 1.25 > report["real"][2]
    # 3D volumes: every spatial axis counts
    vol = torch.nn.functional.interpolate(torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(2)),
                                          scale_factor=4, mode="nearest")
    assert grid_energy(vol + 0.01 * torch.rand(vol.shape), 4) > 5


def test_grid_energy_refuses_grids_the_images_cannot_hold():
    with pytest.raises(DataError, match="too small"):
        grid_energy(torch.zeros(2, 1, 8, 8), 8)
    with pytest.raises(DataError, match=">= 2"):
        grid_energy(torch.zeros(2, 1, 8, 8), 1)
    assert grid_report(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))["periods"] == [2, 4]
