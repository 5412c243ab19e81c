"""The transform models: fit, label-set-preserving synthesis, independent draws, determinism, save/load, 3D."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segsynth.errors import DataError
from segsynth.generators.learned_transforms import (
    LearnedTransforms,
    RandAug,
)
from segsynth.utils.seed import torch_generator
from tests.generators.learned_transforms.helpers import _fitted


def test_fit_trains_both_models_and_encodes_every_unlabelled_image(fitted_2d):
    t, stats, cases = fitted_2d
    assert stats["n_unlabelled"] == 4 and stats["atlas"] == "c0"
    assert stats["spatial"]["steps"] == 6 and stats["appearance"]["steps"] == 6
    assert t.backward_net is not None
    assert t.bank.ids == ["c1", "c2", "c3", "c4"]
    assert t.bank.ddf.shape == (4, 2, 32, 32) and t.bank.delta.shape == (4, 1, 32, 32)
    assert t.bank.delta.abs().sum() > 0  # the appearance model moved off its zero start


@pytest.mark.parametrize("label_warp", ["onehot", "nearest"])
def test_synthesised_labels_stay_in_the_atlas_label_set(fitted_2d, label_warp):
    t, _, cases = fitted_2d
    t.label_warp = label_warp
    try:
        # exaggerate the learned deformations so the warp really moves labels around
        big = t.bank.ddf.clone()
        t.bank.ddf = big + 3.0 * torch.randn(big.shape[:2] + (1, 1), generator=torch_generator(0))
        out = t.sample(6, generator=torch_generator(1), rand_aug=RandAug(displacement=0.08))
    finally:
        t.bank.ddf = big
        t.label_warp = "onehot"
    atlas_labels = set(np.unique(cases[0].mask).tolist())
    for c in out:
        assert c.image.shape == (1, 32, 32) and c.image.dtype == np.float32
        assert c.mask.dtype == np.int64 and set(np.unique(c.mask).tolist()) <= atlas_labels


def test_spatial_and_appearance_are_drawn_independently_from_different_images(fitted_2d):
    t, _, _ = fitted_2d
    g = torch_generator(3)
    draws = [t.draw_sources(g) for _ in range(300)]
    pairs = {(d["spatial_index"], d["appearance_index"]) for d in draws}
    assert all(i != j for i, j in pairs)  # different source images
    assert len(pairs) == 12  # every ordered pair of 4 images occurs: no coupling between the two draws
    for d in draws[:20]:  # each draw comes from its own generator: reproducible from its recorded seed
        assert int(torch.randint(4, (), generator=torch_generator(d["spatial_seed"]))) == d["spatial_index"]
        assert d["spatial_seed"] != d["appearance_seed"]
    # the spatial source does not depend on what the appearance generator produces
    same_spatial = {d["spatial_index"] for d in draws if d["appearance_index"] == 0}
    assert same_spatial == {1, 2, 3}
    cases = t.sample(3, generator=torch_generator(5))
    for c in cases:
        assert c.meta["spatial_source"] != c.meta["appearance_source"]
        assert c.meta["source_mask"] == "c0" and c.meta["method"] == "learned"


def test_determinism_under_a_seed():
    a, _, _ = _fitted(seed=7)
    b, _, _ = _fitted(seed=7)
    assert torch.equal(a.bank.ddf, b.bank.ddf) and torch.equal(a.bank.delta, b.bank.delta)
    ca = a.sample(3, generator=torch_generator(2))
    cb = b.sample(3, generator=torch_generator(2))
    for x, y in zip(ca, cb):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) and x.meta == y.meta
    cc = a.sample(3, generator=torch_generator(3))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(ca, cc))


def test_save_load_round_trip(tmp_path, fitted_2d):
    t, _, _ = fitted_2d
    t.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "transforms.json").read_text())
    assert cfg["atlas_id"] == "c0" and cfg["init"]["inverse"] == "model"
    t2 = LearnedTransforms.load(tmp_path / "m")
    assert t2.bank.ids == t.bank.ids and torch.equal(t2.bank.ddf, t.bank.ddf)
    for (k, v), v2 in zip(t.state_dict().items(), t2.state_dict().values()):
        assert torch.equal(v.cpu(), v2), k
    a = t.sample(2, generator=torch_generator(9))
    b = t2.sample(2, generator=torch_generator(9))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(t.forward_ddf(x), t2.forward_ddf(x))
    with pytest.raises(DataError):
        LearnedTransforms.load(tmp_path / "missing")


def test_inverse_by_negation_in_3d():
    t, stats, cases = _fitted(shape=(12, 12, 12), inverse="negate")
    assert t.backward_net is None and t.bank.ddf.shape == (4, 3, 12, 12, 12)
    out = t.sample(2, generator=torch_generator(0))
    assert all(set(np.unique(c.mask).tolist()) <= set(np.unique(cases[0].mask).tolist()) for c in out)
