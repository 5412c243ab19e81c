"""--precision auto|fp32|bf16 in the training loop: the choice, the old amp flag, a tiny bf16 step."""

import logging

import pytest
import torch

import segsynth.utils.precision as precision
from segsynth.cli import build_parser, train_config_from_args
from segsynth.errors import ConfigError
from segsynth.segment.sources import CaseSource
from segsynth.segment.train import TrainConfig, train_segmenter
from tests.segment.test_train import _model


@pytest.fixture(params=[False, True], ids=["cpu-without-bf16", "cpu-with-amx"])
def cpu_bf16(request, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: request.param)
    return request.param


def test_auto_takes_bf16_only_where_the_cpu_runs_it_fast(cpu_bf16):
    assert TrainConfig(precision="auto").autocast_dtype("cpu") == (torch.bfloat16 if cpu_bf16 else None)
    assert TrainConfig(precision="fp32").autocast_dtype("cpu") is None
    assert TrainConfig(precision="bf16").autocast_dtype("cpu") == torch.bfloat16


def test_old_amp_flag_keeps_its_meaning_and_old_checkpoints_resume():
    assert TrainConfig(amp=True).autocast_dtype("cpu") is None  # amp was CUDA-only
    assert TrainConfig(amp=True).autocast_dtype("cuda") == torch.bfloat16
    # fingerprints of configs written before --precision existed (computed with that version's code)
    assert TrainConfig().fingerprint() == "d21d60d77abf9fd3"
    assert TrainConfig(steps=12, batch_size=2, val_every=4, patch_size=(32, 32), amp=True,
                       prefetch=0).fingerprint() == "4815b6a8ffffbf0a"
    assert TrainConfig(precision="bf16").fingerprint() != TrainConfig().fingerprint()


def test_bad_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="prefetch"):
        TrainConfig(prefetch=-1)


def test_cli_training_commands_take_precision():
    p = build_parser()
    for cmd in (["train", "--n", "2"], ["sweep"], ["genseg", "--n", "2"]):
        a = p.parse_args([*cmd, "--data", "d", "--out", "o", "--precision", "auto"])
        assert train_config_from_args(a).precision == "auto"
    assert train_config_from_args(p.parse_args(["train", "--n", "2", "--data", "d", "--out", "o"])).precision == "fp32"
    with pytest.raises(SystemExit) as e:
        p.parse_args(["train", "--n", "2", "--data", "d", "--out", "o", "--precision", "fp16"])
    assert e.value.code == 2


def _conv_output_dtypes(model):
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_auto_trains_in_fp32_without_fast_bf16(blob_cases_2d, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    model = _model()
    seen = _conv_output_dtypes(model)
    cfg = TrainConfig(steps=2, batch_size=2, val_every=2, progress=False, precision="auto")
    with caplog.at_level(logging.INFO, logger="segsynth.segment.train"):
        res = train_segmenter(model, CaseSource(blob_cases_2d[:4]), blob_cases_2d[4:5], cfg, num_classes=2)
    assert res.precision == "fp32" and set(seen) == {torch.float32}
    assert "training precision: fp32 on cpu (--precision auto)" in caplog.text


def test_bf16_step_is_finite_and_changes_weights(blob_cases_2d, monkeypatch):
    # tiny on purpose: on CPUs without native bf16 (AVX2 only) autocast is ~20x slower than fp32
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _conv_output_dtypes(model)
    cfg = TrainConfig(steps=2, batch_size=2, val_every=2, progress=False, precision="auto")
    res = train_segmenter(model, CaseSource(blob_cases_2d[:4]), blob_cases_2d[4:5], cfg, num_classes=2)
    assert res.precision == "bf16"
    assert torch.bfloat16 in seen  # training (and validation) ran under autocast
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert 0.0 <= res.history[-1]["val_dice"] <= 1.0
    after = res.model.state_dict()
    assert all(after[k].dtype == v.dtype for k, v in before.items())  # weights stay fp32
    assert any(not torch.equal(after[k], v) for k, v in before.items() if v.is_floating_point())
