"""Shared tiny GenSeg settings, cases and contexts of the GenSeg tests."""

import torch

from segsynth.data.case import DatasetInfo
from segsynth.generators.base import MethodContext
from segsynth.generators.genseg import (
    GanTrainer,
    GenSegGenerator,
)
from segsynth.segment.sources import CaseSource
from segsynth.segment.train import TrainConfig
from tests.conftest import make_blob_case

TINY = {"features": 4, "max_features": 8, "disc_features": 4}


TINY_OPTS = {**TINY, "pretrain_steps": 2, "gen_batch_size": 2, "arch_batch_size": 2, "derive_steps": 1}


UNET = {"features": (4, 4, 8, 8, 16, 4)}


def _cases(shape=(32, 32), n=4, channels=1, k=2):
    return [make_blob_case(f"c{i}", shape, channels=channels, num_classes=k, seed=i) for i in range(n)]


def _blob_context(tmp_path, segmenter="unet", segmenter_kwargs=UNET):
    """A 2D method context: 3 training and 2 validation blob cases, 4 segmenter steps, work in tmp_path/run."""
    cases = _cases(n=5)
    info = DatasetInfo("blobs", {0: "background", 1: "blob"}, "other", 2, 1)
    return MethodContext(info=info, train=cases[:3], val=cases[3:], segmenter=segmenter,
                         segmenter_kwargs=segmenter_kwargs,
                         train_config=TrainConfig(steps=4, batch_size=2, val_every=2, progress=False), seed=0,
                         workdir=tmp_path / "run")


def _fitted(shape=(32, 32), channels=1, k=2, steps=2, seed=0):
    gen = GenSegGenerator(**TINY)
    stats = gen.fit(_cases(shape, channels=channels, k=k), seed=seed, steps=steps)
    return gen, stats


def _gan_trainer(lr=2e-3):
    """A built tiny generator (no dropout), its GAN trainer and a batch (x, y) of 4 real blob pairs."""
    gen = GenSegGenerator(**TINY, dropout=0.0)
    cases = _cases()
    gen.build_for(cases, seed=0)
    return gen, GanTrainer(gen, lr=lr), CaseSource(cases).draw(4, torch.Generator().manual_seed(0))
