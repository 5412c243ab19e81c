"""Label fidelity: a perfect predictor scores 1, a blind one 0; summaries, references, sweep field, audit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.evaluate.fidelity import (
    audit_fidelity,
    draw_pairs,
    fidelity_summary,
    label_fidelity,
    load_reference,
    method_fidelity,
    reference_dir,
    reference_segmenter,
)
from segsynth.generators.base import Method, MethodContext
from segsynth.segment.sources import CaseSource
from segsynth.segment.train import TrainConfig
from tests.conftest import make_blob_case

INFO = DatasetInfo("blobs", {0: "background", 1: "blob"}, "other", 2, 1)
TINY = {"features": (4, 4, 8, 8, 16, 4)}


class Oracle(torch.nn.Module):
    """Predicts class round(image): a perfect segmenter for pairs whose image is their mask."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.k = num_classes
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0].round().clamp(0, self.k - 1).long()
        return torch.nn.functional.one_hot(ids, self.k).movedim(-1, 1).float() * 10 + 0 * self.dummy


def oracle_case(i: int, faithful: bool = True, shape=(16, 16)) -> Case:
    mask = make_blob_case(f"o{i}", shape, seed=i).mask
    image = mask.astype(np.float32)[None] if faithful else np.zeros((1, *shape), np.float32)
    return Case(f"{'good' if faithful else 'bad'}{i}", image, mask, {})


def test_perfect_predictor_has_fidelity_one_and_blind_one_zero():
    good = [oracle_case(i) for i in range(4)]
    bad = [oracle_case(i, faithful=False) for i in range(3)]
    assert label_fidelity(Oracle(), good, num_classes=2, device="cpu") == [1.0] * 4
    assert label_fidelity(Oracle(), bad, num_classes=2, device="cpu") == [0.0] * 3
    cases3d = [Case("v", oracle_case(0, shape=(8, 8, 8)).image, oracle_case(0, shape=(8, 8, 8)).mask)]
    assert label_fidelity(Oracle(), cases3d, num_classes=2, device="cpu", patch_size=(8, 8, 8)) == [1.0]


def test_label_fidelity_needs_masks():
    with pytest.raises(ValueError, match="no mask"):
        label_fidelity(Oracle(), [Case("u", np.zeros((1, 8, 8), np.float32))], num_classes=2, device="cpu")


def test_fidelity_summary():
    s = fidelity_summary([0.4, 0.6, 0.8, float("nan")], [0.8, 1.0])
    assert set(s) == {"synthetic_mean", "synthetic_median", "real_val_mean", "ratio", "n_synthetic", "n_real"}
    assert s["synthetic_mean"] == pytest.approx(0.6) and s["synthetic_median"] == pytest.approx(0.6)
    assert s["real_val_mean"] == pytest.approx(0.9) and s["ratio"] == pytest.approx(0.6 / 0.9)
    assert (s["n_synthetic"], s["n_real"]) == (3, 2)
    assert math.isnan(fidelity_summary([0.5], [])["ratio"])


def test_draw_pairs_is_deterministic():
    src = CaseSource([make_blob_case(f"c{i}", (16, 16), seed=i) for i in range(5)])
    a, b = draw_pairs(src, 7, seed=3), draw_pairs(src, 7, seed=3)
    assert len(a) == 7 and all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert a[0].mask.dtype == np.int64


class _SyntheticMethod(Method):
    name = "oracle_syn"

    def synthetic_source(self, ctx):
        return CaseSource([oracle_case(i) for i in range(3)] + [oracle_case(9, faithful=False)])


def test_method_fidelity_field_and_montage(tmp_path):
    ctx = MethodContext(info=INFO, train=[oracle_case(0)], val=[oracle_case(1), oracle_case(2)],
                        train_config=TrainConfig(steps=1), seed=0)
    assert method_fidelity(Method(), ctx, Oracle()) is None  # no synthetic pairs: no field
    f = method_fidelity(_SyntheticMethod(), ctx, Oracle(), n_pairs=40, montage=tmp_path / "m.png")
    assert f["real_val_mean"] == 1.0 and f["n_synthetic"] == 40 and f["n_real"] == 2
    assert 0.5 < f["synthetic_mean"] < 1.0 and set(f["scores"]) == {0.0, 1.0}
    assert f["ratio"] == pytest.approx(f["synthetic_mean"])
    assert (tmp_path / "m.png").stat().st_size > 1000 and f["montage"].endswith("m.png")
    grid = f["grid_energy"]  # block artefacts of the synthetic images against the training image, 16² images
    assert grid["periods"] == [2, 4, 8] and len(grid["real"]) == len(grid["synthetic"]) == 3


def _blob_ctx(tmp_path, seed=0):
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(4)]
    return MethodContext(info=INFO, train=cases[:2], val=cases[2:], segmenter_kwargs=TINY, seed=seed,
                         train_config=TrainConfig(steps=2, batch_size=2, val_every=1, progress=False, seed=seed),
                         workdir=tmp_path / "runs" / "genseg_n2_s0")


def test_reference_is_trained_once_then_loaded(tmp_path, monkeypatch):
    ctx = _blob_ctx(tmp_path)
    d = reference_dir(ctx)
    assert d.parent == tmp_path / "runs" / "_fidelity_reference"
    assert reference_dir(_blob_ctx(tmp_path, seed=1)) != d  # another split, another reference
    model = reference_segmenter(ctx, d)
    assert (d / "model" / "model.json").exists() and not (d / "checkpoint").exists()
    import segsynth.generators as gens

    monkeypatch.setattr(gens, "get_method", lambda *a, **k: pytest.fail("retrained a saved reference"))
    again = reference_segmenter(ctx, d)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    other = tmp_path / "augment_run"  # a saved augment run is preferred
    from segsynth.segment.model_io import save_segmenter

    save_segmenter(model, other, INFO, segmenter_kwargs=TINY)
    assert load_reference(other, "cpu") is not None and load_reference(tmp_path / "none", "cpu") is None
    reference_segmenter(ctx, tmp_path / "fresh", reuse=[other])
    assert not (tmp_path / "fresh").exists()


def test_audit_fidelity_with_saved_model(tmp_path):
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.model_io import save_segmenter

    model = build_segmenter("unet", 2, 1, 2, **TINY)
    save_segmenter(model, tmp_path / "model", INFO, segmenter_kwargs=TINY)
    syn = [make_blob_case(f"s{i}", (32, 32), seed=10 + i) for i in range(3)]
    real = [make_blob_case(f"r{i}", (32, 32), seed=i) for i in range(2)]
    res = audit_fidelity(syn, real, INFO, out=tmp_path / "audit", model_dir=tmp_path / "model")
    assert res["n_synthetic"] == 3 and res["n_real"] == 2 and len(res["pairs"]) == 3
    assert (tmp_path / "audit" / "fidelity.json").exists()
    assert (tmp_path / "audit" / "fidelity_least_faithful.png").exists()
    assert res["grid_energy"]["periods"] == [2, 4, 8, 16] and len(res["grid_energy"]["synthetic"]) == 4
    from segsynth.evaluate.fidelity import format_fidelity

    assert "grid energy, synthetic (real)" in format_fidelity(res) and "16 px" in format_fidelity(res)
    from segsynth.errors import DataError

    with pytest.raises(DataError, match="no saved segmenter"):
        audit_fidelity(syn, real, INFO, out=tmp_path / "a2", model_dir=tmp_path / "nothing")


def test_makes_synthetic_pairs():
    from segsynth.evaluate.fidelity import makes_synthetic_pairs
    from segsynth.generators import get_method

    assert makes_synthetic_pairs(get_method("domain_rand")) and makes_synthetic_pairs(get_method("genseg"))
    assert makes_synthetic_pairs(get_method("brainspade")) and makes_synthetic_pairs(get_method("learned"))
    assert makes_synthetic_pairs(get_method("sas_aug")) and makes_synthetic_pairs(get_method("learned_randaug"))
    assert not makes_synthetic_pairs(get_method("augment")) and not makes_synthetic_pairs(get_method("none"))


def test_audit_command_trains_or_takes_a_reference(tmp_path, capsys):
    import json

    from segsynth.cli import main
    from tests.conftest import write_png_dataset

    real = write_png_dataset(tmp_path / "real", n=5)
    syn = write_png_dataset(tmp_path / "syn", n=3, seed=4, prefix="syn")
    common = ["--data", str(real), "--size", "32", "--device", "cpu", "-q"]
    train = ["--steps", "2", "--batch-size", "2", "--val-every", "2", "--unet-features", "4,4,8,8,16,4"]
    assert main(["audit", "--synthetic", str(syn), "--out", str(tmp_path / "a"), *common, *train]) == 0
    res = json.loads((tmp_path / "a" / "fidelity.json").read_text())
    assert res["n_synthetic"] == 3 and res["n_real"] == 2 and "label fidelity: synthetic" in capsys.readouterr().out
    model = tmp_path / "a" / "reference" / "model"
    assert main(["audit", "--synthetic", str(syn), "--out", str(tmp_path / "b"), "--fidelity-model", str(model),
                 *common]) == 0
    assert json.loads((tmp_path / "b" / "fidelity.json").read_text())["n_real"] == 5
    assert main(["audit", "--synthetic", str(syn), "--out", str(tmp_path / "c"), "--fidelity-model",
                 str(tmp_path / "nothing"), *common]) == 2


def test_genseg_run_exposes_its_generated_pairs(tmp_path):
    from segsynth.generators import get_method
    from tests.generators.genseg.helpers import TINY_OPTS, _blob_context

    ctx = _blob_context(tmp_path)
    method = get_method("genseg", **TINY_OPTS)
    assert method.synthetic_source(ctx) is None  # nothing generated before the run
    method.run(ctx)
    f = method_fidelity(method, ctx, Oracle(), n_pairs=5)
    assert f["n_synthetic"] == 5 and len(f["scores"]) == 5 and f["n_real"] == len(ctx.val)


def test_fidelity_advice_is_computed_from_the_ratio():
    from segsynth.evaluate.fidelity import fidelity_advice

    low = fidelity_advice({"ratio": 0.34}, "genseg")
    assert "ratio 0.34 < 0.90" in low and "genseg.pretrain_steps" in low and "genseg.min_fidelity" in low
    assert "pretrain_steps" not in fidelity_advice({"ratio": 0.5})  # a folder of pairs: no generator options
    assert fidelity_advice({"ratio": 0.95}) is None and fidelity_advice({"ratio": 1.05}) is None
    assert "easier to segment" in fidelity_advice({"ratio": 1.3})
