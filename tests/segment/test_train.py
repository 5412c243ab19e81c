import pytest
import torch

from segsynth.data.transforms import classical_augmentation
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.inference import predict
from segsynth.segment.sources import CaseSource
from segsynth.segment.train import TrainConfig, train_segmenter
from tests.conftest import make_blob_case

FEAT = {"features": (8, 8, 16, 16, 32, 8)}


def _model(seed=0, dims=2):
    torch.manual_seed(seed)
    return build_segmenter("unet", dims, 1, 2, **FEAT)


def test_learns_blobs_and_selects_on_validation():
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(8)]
    cfg = TrainConfig(steps=60, batch_size=4, lr=3e-3, val_every=20, progress=False)
    res = train_segmenter(_model(), CaseSource(cases[:4]), cases[4:6], cfg, num_classes=2)
    vals = [h["val_dice"] for h in res.history if "val_dice" in h]
    assert len(vals) == 3 and res.best_val_dice == pytest.approx(max(vals))
    assert res.best_val_dice > 0.7
    assert res.history[-1]["loss"] < res.history[0]["loss"]


class _Kill:
    def __init__(self, at):
        self.at = at

    def after_step(self, state):
        if state.step == self.at:
            raise KeyboardInterrupt


class _Counter:
    def __init__(self):
        self.n = 0

    def after_step(self, state):
        self.n += 1
        return {"counter": float(self.n)}

    def state_dict(self):
        return {"n": torch.tensor(self.n)}

    def load_state_dict(self, d):
        self.n = int(d["n"])


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(6)]
    src = CaseSource(cases[:4], transform=classical_augmentation("combined", 2))
    cfg = TrainConfig(steps=12, batch_size=2, val_every=4, progress=False)
    ref = train_segmenter(_model(), src, cases[4:], cfg, num_classes=2)

    ckdir = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(_model(), src, cases[4:], cfg, num_classes=2, checkpoint_dir=ckdir,
                        hooks=[_Counter(), _Kill(10)])
    assert (ckdir / "last.pt").exists() and not list(ckdir.glob("*.tmp"))
    counter = _Counter()
    res = train_segmenter(_model(seed=99), src, cases[4:], cfg, num_classes=2, checkpoint_dir=ckdir,
                          hooks=[counter])
    assert counter.n == 12  # hook state came back from the checkpoint (8 restored + 4 new steps)
    for a, b in zip(ref.model.state_dict().values(), res.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    # the checkpoint loads with weights_only=True (no pickled code)
    torch.load(ckdir / "last.pt", weights_only=True)


def test_changed_config_ignores_checkpoint(tmp_path):
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(4)]
    cfg = TrainConfig(steps=4, batch_size=2, val_every=2, progress=False)
    train_segmenter(_model(), CaseSource(cases[:2]), cases[2:], cfg, num_classes=2, checkpoint_dir=tmp_path)
    cfg2 = TrainConfig(steps=6, batch_size=2, val_every=2, progress=False)
    res = train_segmenter(_model(), CaseSource(cases[:2]), cases[2:], cfg2, num_classes=2, checkpoint_dir=tmp_path)
    assert len(res.history) == 6


def test_3d_patches_and_sliding_window():
    cases = [make_blob_case(f"v{i}", (40, 36, 32), seed=i) for i in range(3)]
    cfg = TrainConfig(steps=3, batch_size=2, val_every=3, patch_size=(32, 32, 32), progress=False)
    res = train_segmenter(_model(dims=3), CaseSource(cases[:2], patch_size=(32, 32, 32)), cases[2:], cfg,
                          num_classes=2)
    pred = predict(res.model, cases[2].image, 2, patch_size=(32, 32, 32))
    assert pred.shape == (40, 36, 32) and set(pred.ravel().tolist()) <= {0, 1}
