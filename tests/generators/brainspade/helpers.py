"""Shared tiny brainSPADE settings and cases of the brainSPADE tests."""

from __future__ import annotations

from segsynth.data.case import Case, DatasetInfo
from tests.conftest import make_blob_case

K = 3


LABEL_OPTS = dict(num_classes=K, ae_channels=(16, 16), unet_channels=(16, 32), unet_attention=(False, True),
                  num_head_channels=16, disc_channels=8, disc_layers=2, ae_steps=1, ldm_steps=1, ae_batch_size=2,
                  ldm_batch_size=4, latent_copies=1, sampling_steps=2, num_train_timesteps=20,
                  progress=False)


IMAGE_OPTS = dict(num_classes=K, spade_channels=(8, 16), z_dim=4, spade_hidden=8, disc_channels=8, spade_steps=1,
                  spade_batch_size=4, classifier_steps=1, progress=False)


INFO = DatasetInfo("blobs", {0: "background", 1: "a", 2: "b"}, "mri", 2, 1)


def _cases(n=4, shape=(32, 32)):
    cases = [make_blob_case(f"c{i}", shape, num_classes=K, seed=i) for i in range(n)]
    for i, c in enumerate(cases):
        c.meta.update(volume_id=f"v{i // 2}", slice_index=i % 2, num_slices=2)
    return cases


def _target(n=2):
    out = []
    for i in range(n):
        c = make_blob_case(f"t{i}", (32, 32), num_classes=K, seed=50 + i)
        out.append(Case(c.case_id, (1.0 - c.image) * 2.0, None, {"domain": "target-site"}))
    return out
