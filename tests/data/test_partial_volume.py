"""Partial-volume maps: validity, one-hot <-> PV <-> argmax round trips, downsampling, given probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsynth.data.partial_volume import (
    case_labels,
    case_pv,
    is_valid_pv,
    labels_to_onehot,
    labels_to_pv,
    pv_from_probabilities,
    pv_resize,
    pv_to_labels,
    renormalise_pv,
)
from segsynth.errors import ConfigError, DataError
from tests.conftest import make_blob_case


def _labels(shape=(32, 32), k=4, seed=0):
    return torch.as_tensor(make_blob_case("x", shape, num_classes=k, seed=seed).mask)[None]


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_exact_round_trip_without_blur(shape):
    y = _labels(shape)
    onehot = labels_to_onehot(y, 4)
    assert onehot.shape == (1, 4, *shape) and torch.equal(onehot.sum(1), torch.ones(1, *shape))
    pv = labels_to_pv(y, 4)
    assert torch.equal(pv, onehot)
    assert torch.equal(pv_to_labels(pv), y)


def test_smoothed_pv_is_valid_and_argmax_keeps_labels():
    y = _labels()
    pv = labels_to_pv(y, 4, sigma=0.5)
    assert is_valid_pv(pv)
    assert pv.min() >= 0
    assert 0 < float(((pv > 0.01) & (pv < 0.99)).float().mean())  # soft boundaries exist
    agree = float((pv_to_labels(pv) == y).float().mean())
    assert agree > 0.99


def test_downsampling_gives_class_fractions():
    y = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
    pv = labels_to_pv(y, 3, downsample=2)
    assert pv.shape == (1, 3, 2, 2)
    assert torch.allclose(pv[0, :, 0, 0], torch.tensor([0.75, 0.25, 0.0]))
    assert torch.allclose(pv[0, :, 0, 1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(pv[0, :, 1, 0], torch.tensor([0.0, 0.0, 1.0]))
    # labels made at the coarse size and enlarged come back exactly after area-downsampling
    coarse = _labels((16, 16))
    fine = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(pv_to_labels(labels_to_pv(fine, 4, downsample=2)), coarse)
    with pytest.raises(ConfigError):
        labels_to_pv(torch.zeros(1, 5, 5, dtype=torch.long), 2, downsample=2)


def test_from_probabilities_with_and_without_background():
    rng = np.random.default_rng(0)
    p = rng.random((2, 3, 8, 8)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    pv = pv_from_probabilities(p)
    assert is_valid_pv(pv) and torch.allclose(pv, torch.as_tensor(p), atol=1e-6)
    fg = torch.as_tensor(p[:, 1:])
    pv2 = pv_from_probabilities(fg, add_background=True)
    assert torch.allclose(pv2, torch.as_tensor(p), atol=1e-6)
    with pytest.raises(DataError):
        pv_from_probabilities(fg)  # background missing: sums < 1
    with pytest.raises(DataError):
        pv_from_probabilities(torch.full((1, 2, 4, 4), float("nan")))


def test_resize_and_renormalise_keep_validity():
    pv = labels_to_pv(_labels(), 4, sigma=1.0)
    for size in [(16, 16), (48, 48)]:
        assert is_valid_pv(pv_resize(pv, size))
    raw = torch.randn(2, 3, 5, 5)
    r = renormalise_pv(raw)
    assert is_valid_pv(r)
    assert torch.equal(renormalise_pv(torch.zeros(1, 3, 2, 2))[:, 0], torch.ones(1, 2, 2))


def test_case_helpers_and_bad_labels():
    case = make_blob_case("c", (16, 16), num_classes=3)
    pv = case_pv(case.mask, 3, sigma=0.5)
    assert pv.shape == (3, 16, 16) and pv.dtype == np.float32
    assert is_valid_pv(pv[None])
    assert (case_labels(case_pv(case.mask, 3)) == case.mask).all()
    with pytest.raises(DataError):
        labels_to_onehot(torch.tensor([[0, 3]]), 3)
    assert not is_valid_pv(np.full((1, 2, 2, 2), 0.7))
