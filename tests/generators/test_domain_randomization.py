"""Domain randomisation (SynthSeg recipe): shapes, statistics, label sets, determinism, save/load, method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segsynth.data.case import DatasetInfo
from segsynth.errors import ConfigError, DataError
from segsynth.generators import get_method
from segsynth.generators.base import MethodContext
from segsynth.generators.domain_randomization import (
    DomainRandomization,
    DomainRandomizer,
    DomainRandSource,
    domain_rand_cases,
    normalisation_for,
)
from segsynth.segment.train import TrainConfig
from segsynth.utils.seed import torch_generator
from tests.conftest import make_blob_case


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
@pytest.mark.parametrize("norm", ["zscore", "unit"])
def test_images_have_the_right_shape_and_statistics(shape, norm):
    cases = [make_blob_case(f"c{i}", shape, seed=i, num_classes=3) for i in range(2)]
    gen = DomainRandomization(3, DomainRandomizer(channels=2, normalise=norm))
    gen.fit(cases)
    out = gen.sample(3, generator=torch_generator(0))
    for c in out:
        assert c.image.shape == (2, *shape) and c.image.dtype == np.float32 and np.isfinite(c.image).all()
        assert c.mask.shape == shape and c.mask.dtype == np.int64
        assert set(np.unique(c.mask).tolist()) <= {0, 1, 2}
        assert c.meta["method"] == "domain_rand" and c.meta["source_mask"] in ("c0", "c1")
        if norm == "zscore":
            assert np.allclose(c.image.reshape(2, -1).mean(1), 0, atol=1e-4)
            assert np.allclose(c.image.reshape(2, -1).std(1), 1, atol=1e-2)
        else:
            assert c.image.min() >= 0 and c.image.max() <= 1 + 1e-6
    assert not np.array_equal(out[0].image, out[1].image)


def test_each_label_gets_its_own_gaussian_intensity():
    case = make_blob_case("a", (32, 32), num_classes=3, seed=1)
    r = DomainRandomizer(std_range=(0.0, 0.0), background_classes=1, rotate_deg=0, scale=(1, 1), translate=0,
                         elastic_alpha=0, blur_sigma=(0, 0), bias_std=0, gamma_std=0, resolution=(1, 1),
                         noise_std=(0, 0), normalise="unit")
    mask = torch.as_tensor(case.mask)
    params = r.draw(mask.shape, 3, torch_generator(0))
    x, y = r.apply(mask, params, 3)
    assert torch.equal(y, mask)
    levels = [x[0][y == k].unique() for k in range(3)]
    assert all(len(v) == 1 for v in levels)  # constant inside a label
    assert len({float(v) for v in levels}) == 3  # and different between labels
    order = np.argsort([params["means"][0][2], params["means"][0][0], params["means"][0][1]])  # bg is last
    assert np.argsort([float(levels[0]), float(levels[1]), float(levels[2])]).tolist() == order.tolist()


def test_draw_then_apply_is_deterministic_and_json_serialisable():
    mask = torch.as_tensor(make_blob_case("a", (24, 24), num_classes=3).mask)
    r = DomainRandomizer()
    p1 = r.draw(mask.shape, 3, torch_generator(5))
    p2 = json.loads(json.dumps(r.draw(mask.shape, 3, torch_generator(5))))
    x1, y1 = r.apply(mask, p1, 3)
    x2, y2 = r.apply(mask, p2, 3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    a = domain_rand_cases([make_blob_case("a", (24, 24), num_classes=3)], 2, 3, seed=1)
    b = domain_rand_cases([make_blob_case("a", (24, 24), num_classes=3)], 2, 3, seed=1)
    assert all(np.array_equal(u.image, v.image) for u, v in zip(a, b))


def test_source_batches_and_patches():
    masks = [make_blob_case(f"c{i}", (16, 16, 16), seed=i, num_classes=3).mask for i in range(2)]
    x, y = DomainRandSource(masks, DomainRandomizer(), 3, patch_size=(8, 8, 8)).draw(3, torch_generator(0))
    assert x.shape == (3, 1, 8, 8, 8) and y.shape == (3, 8, 8, 8) and y.dtype == torch.long
    with pytest.raises(DataError):
        DomainRandSource([], DomainRandomizer(), 3)


def test_save_load_round_trip(tmp_path):
    cases = [make_blob_case(f"c{i}", (20, 20), seed=i, num_classes=3) for i in range(2)]
    gen = DomainRandomization(3, DomainRandomizer(background_classes=2, normalise="unit"))
    gen.fit(cases)
    gen.save(tmp_path / "dr")
    gen2 = DomainRandomization.load(tmp_path / "dr")
    assert gen2.randomizer == gen.randomizer and gen2.mask_ids == ["c0", "c1"]
    a = gen.sample(2, generator=torch_generator(3))
    b = gen2.sample(2, generator=torch_generator(3))
    assert all(np.array_equal(u.image, v.image) and np.array_equal(u.mask, v.mask) for u, v in zip(a, b))
    one_each = gen.sample(2, generator=torch_generator(0), masks=[c.mask for c in cases])
    assert [c.meta["source_mask"] for c in one_each] == ["mask0", "mask1"]
    with pytest.raises(DataError):
        DomainRandomization.load(tmp_path / "nothing")


def test_method_trains_and_rejects_unknown_options(tmp_path):
    with pytest.raises(ConfigError):
        get_method("domain_rand", mean_rnage=[0, 1])
    with pytest.raises(ConfigError):
        DomainRandomizer(normalise="minmax")
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i, num_classes=3) for i in range(3)]
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "mri", 2, 1, extra={"normalise": "zscore"})
    assert normalisation_for(info) == "zscore"
    ctx = MethodContext(info=info, train=cases[:2], val=cases[2:], segmenter_kwargs={"features": (4, 4, 8, 8, 16, 4)},
                        train_config=TrainConfig(steps=2, batch_size=2, val_every=2, progress=False),
                        workdir=tmp_path / "run")
    res = get_method("domain_rand", background_classes=2).run(ctx)
    assert res.steps == 2 and 0 <= res.best_val_dice <= 1
    only_dr = get_method("domain_rand", real_weight=0.0, augment_synthetic=False).training_source(ctx)
    assert isinstance(only_dr, DomainRandSource)
    augmented = get_method("domain_rand", real_weight=0.0).training_source(ctx)  # augmented like the real pairs
    assert isinstance(augmented.source, DomainRandSource) and augmented.transform is not None
