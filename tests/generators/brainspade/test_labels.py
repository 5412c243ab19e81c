"""brainSPADE's label generator on tiny inputs: training, valid PV samples, determinism, save/load."""

from __future__ import annotations

import numpy as np
import torch

from segsynth.data.partial_volume import is_valid_pv
from segsynth.generators.brainspade import (
    LabelGenerator,
)
from tests.generators.brainspade.helpers import LABEL_OPTS, K, _cases


def test_label_generator_trains_and_samples_valid_pv(fitted):
    cases, labels, _, stats, _ = fitted
    assert stats["ae"]["steps"] == 1 and stats["ldm"]["steps"] == 1
    assert np.isfinite(stats["ae"]["l1"]) and np.isfinite(stats["ldm"]["mse_final_mean"])
    assert np.isfinite(stats["val_ae_l1"])
    pv, recs = labels.sample_pv([1, 2, 3])
    assert pv.shape == (3, K, 32, 32) and is_valid_pv(pv)
    assert all(r["sampler"] == "ddim" and r["steps"] == 2 and len(r["condition"]) == K - 1 for r in recs)
    out = labels.sample(2, generator=torch.Generator().manual_seed(0))
    for c in out:
        assert set(np.unique(c.mask)) <= set(range(K)) and c.mask.dtype == np.int64
        assert np.array_equal(c.mask, c.image.argmax(0))
    # explicit conditions, DDPM (stochastic steps) reproducible through the seeds
    a, _ = labels.sample_pv([5], conditions=[[1.0, 0.0]], sampler="ddpm")
    b, _ = labels.sample_pv([5], conditions=[[1.0, 0.0]], sampler="ddpm")
    assert torch.equal(a, b) and is_valid_pv(a)


def test_label_generator_uses_no_global_random_state():
    state = torch.get_rng_state()
    gen = LabelGenerator(**LABEL_OPTS)
    gen.fit(_cases(2, (16, 16)), seed=3)
    gen.sample_pv([1], sampler="ddpm")
    assert torch.equal(state, torch.get_rng_state())


def test_label_generator_determinism_and_save_load(fitted, tmp_path):
    cases, labels, _, _, _ = fitted
    again = LabelGenerator(**LABEL_OPTS, condition="class_presence")
    again.fit(cases, val=cases[:1], seed=0)
    for a, b in zip(labels.autoencoder.state_dict().values(), again.autoencoder.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(labels.sample_pv([7, 8])[0], again.sample_pv([7, 8])[0])
    labels.save(tmp_path / "lab")
    loaded = LabelGenerator.load(tmp_path / "lab")
    assert loaded.scale_factor == labels.scale_factor
    assert torch.allclose(labels.sample_pv([7, 8])[0], loaded.sample_pv([7, 8])[0], atol=1e-6)
