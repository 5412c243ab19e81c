"""Shared tiny settings, cases and contexts of the learned-transforms tests."""

from __future__ import annotations

from segsynth.data.case import DatasetInfo
from segsynth.generators.base import MethodContext
from segsynth.generators.learned_transforms import (
    LearnedTransforms,
    TransformFitConfig,
)
from segsynth.segment.train import TrainConfig
from tests.conftest import make_blob_case

FAST = TransformFitConfig(steps=6, appearance_steps=6, batch_size=2, lr=1e-3)


SMALL = {"reg_channels": (8, 8, 8, 8), "appearance_channels": (8, 16)}


def _cases(shape=(32, 32), n=5, k=3):
    return [make_blob_case(f"c{i}", shape, seed=i, num_classes=k) for i in range(n)]


def _fitted(shape=(32, 32), seed=0, **kw):
    cases = _cases(shape)
    t = LearnedTransforms.for_atlas(cases[0], 3, seed=seed, **{**SMALL, **kw})
    stats = t.fit([cases[0]], unlabelled=cases[1:], seed=seed, config=FAST)
    return t, stats, cases


def _ctx(tmp_path, cases, steps=2, **opts):
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "other", 2, 1)
    cfg = TrainConfig(steps=steps, batch_size=2, val_every=steps, progress=False)
    from segsynth.data.case import Case

    unl = [Case(c.case_id, c.image, None, {}) for c in cases[2:]]
    return MethodContext(info=info, train=cases[:1], val=cases[1:2], unlabelled=unl, segmenter="unet",
                         segmenter_kwargs={"features": (4, 4, 8, 8, 16, 4)}, train_config=cfg, seed=0,
                         workdir=tmp_path / "runs" / "x", options=opts)


FAST_OPTS = {"reg_steps": 4, "app_steps": 4, "reg_batch": 2, "reg_channels": [8, 8, 8, 8], "app_channels": [8, 16]}
