"""GPU checks (``pytest -m gpu``; benchmarks/gpu_check.sh runs them): skipped without CUDA."""

import numpy as np
import pytest
import torch

from segsynth.data.transforms import classical_augmentation
from segsynth.segment.inference import predict
from segsynth.segment.sources import CaseSource
from segsynth.segment.train import TrainConfig, train_segmenter
from segsynth.utils.precision import resolve_precision
from tests.segment.test_train import _model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_precision_on_cuda_follows_bf16_support():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert resolve_precision("auto", "cuda") == expected
    assert TrainConfig(precision="auto").autocast_dtype("cuda") == expected


def test_bf16_training_on_cuda_learns_and_matches_prefetch_off(blob_cases_2d):
    src = CaseSource(blob_cases_2d[:4], transform=classical_augmentation("combined", 2))
    results = []
    for depth in (2, 0):
        cfg = TrainConfig(steps=40, batch_size=4, lr=3e-3, val_every=20, progress=False, precision="bf16",
                          prefetch=depth, seed=1)
        results.append(train_segmenter(_model(), src, blob_cases_2d[4:], cfg, num_classes=2, device="cuda"))
    res = results[0]
    assert res.precision == "bf16" and res.peak_memory_mb > 0
    assert all(np.isfinite(h["loss"]) for h in res.history)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert next(res.model.parameters()).dtype == torch.float32  # weights stay fp32 under autocast
    # same batches with and without the prefetch thread (GPU kernels may differ in the last bits)
    assert [h["loss"] for h in res.history][:3] == pytest.approx([h["loss"] for h in results[1].history][:3],
                                                                rel=1e-2)


def test_inference_on_cuda_matches_cpu(blob_cases_2d):
    model = _model().eval()
    img = blob_cases_2d[0].image
    on_cpu = predict(model, img, 2, device="cpu")
    on_gpu = predict(model.to("cuda"), img, 2, device="cuda")
    assert on_gpu.shape == on_cpu.shape and on_gpu.dtype == np.int64
    assert (on_gpu == on_cpu).mean() > 0.99
