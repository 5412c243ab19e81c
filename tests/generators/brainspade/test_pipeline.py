"""brainSPADE's two stages together: pairs, resumable streaming to a dataset, 3D."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segsynth.data.partial_volume import is_valid_pv
from segsynth.generators.brainspade import (
    BrainSpadeGenerator,
    ImageGenerator,
    LabelGenerator,
    write_synthetic_dataset,
)
from tests.conftest import make_blob_case
from tests.generators.brainspade.helpers import IMAGE_OPTS, INFO, LABEL_OPTS, K


def test_brainspade_pairs_and_resumable_streaming(fitted, tmp_path, monkeypatch):
    cases, labels, images, _, _ = fitted
    gen = BrainSpadeGenerator.from_parts(labels, images)
    pairs = gen.sample(3, generator=torch.Generator().manual_seed(0))
    for p in pairs:
        assert set(np.unique(p.mask)) <= set(range(K))
        assert p.meta["source_mask"] == "label-generator" and "seed" in p.meta and "style_source" in p.meta
    gen.save(tmp_path / "model")
    loaded = BrainSpadeGenerator.load(tmp_path / "model")
    full = write_synthetic_dataset(loaded, tmp_path / "full", 5, info=INFO, seed=4, batch_size=2, model="m",
                                   progress=False)

    from segsynth.data.writer import DatasetWriter

    real_add = DatasetWriter.add
    calls = {"n": 0}

    def dying_add(self, case):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_add(self, case)

    monkeypatch.setattr(DatasetWriter, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(loaded, tmp_path / "resumed", 5, info=INFO, seed=4, batch_size=2, model="m",
                                progress=False)
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(DatasetWriter, "add", real_add)
    resumed = write_synthetic_dataset(loaded, tmp_path / "resumed", 5, info=INFO, seed=4, batch_size=2, model="m",
                                      progress=False)
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=None)
    a = {c.case_id: c for c in load_dataset(full, spec, progress=False).cases}
    b = {c.case_id: c for c in load_dataset(resumed, spec, progress=False).cases}
    assert sorted(a) == sorted(b) == [f"syn{i:06d}" for i in range(5)]
    for cid in a:
        np.testing.assert_array_equal(a[cid].mask, b[cid].mask)
        np.testing.assert_allclose(a[cid].image, b[cid].image, atol=1e-5)
    prov = [json.loads(line) for line in (resumed / "provenance.jsonl").read_text().splitlines()]
    assert {p["meta"]["model"] for p in prov} == {"m"}
    assert all({"seed", "style_source", "source_mask", "sampler"} <= set(p["meta"]) for p in prov)


def test_3d_generators_one_step_each():
    cases = [make_blob_case(f"v{i}", (8, 8, 8), num_classes=2, seed=i) for i in range(2)]
    labels = LabelGenerator(**{**LABEL_OPTS, "num_classes": 2, "spatial_dims": 3, "disc_layers": 1})
    labels.fit(cases, seed=0)
    pv, _ = labels.sample_pv([1])
    assert pv.shape == (1, 2, 8, 8, 8) and is_valid_pv(pv)
    images = ImageGenerator(**{**IMAGE_OPTS, "num_classes": 2, "spatial_dims": 3, "num_d": 1,
                               "spade_batch_size": 2})
    images.fit(cases, seed=0)
    out = images.sample(1, generator=torch.Generator().manual_seed(0), masks=[cases[0].mask])
    assert out[0].image.shape == (1, 8, 8, 8)


def test_sharded_sampling_writes_the_same_pairs(fitted, tmp_path):
    """2 shards (blocks 0-1 and 2-4, batches of 2 as one writer has them) give one writer's bytes."""
    from tests.experiments.test_shards import tree

    _, labels, images, _, _ = fitted
    gen = BrainSpadeGenerator.from_parts(labels, images)
    kw = dict(info=INFO, seed=4, batch_size=2, model="m", progress=False)
    one = tree(write_synthetic_dataset(gen, tmp_path / "k1", 5, **kw))
    two = tree(write_synthetic_dataset(gen, tmp_path / "k2", 5, shards=2, **kw))
    assert one.keys() == two.keys() and all(one[k] == two[k] for k in one if k != "dataset.json")
