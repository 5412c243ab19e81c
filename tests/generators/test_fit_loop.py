"""The shared frame of the generators' training loops: checkpointed start, progress, timing, autocast."""

from __future__ import annotations

import torch

from segsynth.generators.fit_checkpoint import FitCheckpoint
from segsynth.generators.fit_loop import FitLoop, optimizer_step, tail_mean


def _run(ckpt: FitCheckpoint, steps: int, stop: int | None = None) -> tuple[torch.nn.Linear, list[float]]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    stage = ckpt.stage("toy", modules={"net": net}, optimizers={"net": opt}, generators={"data": g})
    losses: list[float] = stage.restore().get("losses", [])
    loop = FitLoop("toy", steps, stage=stage)
    for step in loop:
        if step == stop:
            break
        x = torch.randn(4, 3, generator=g)
        with loop.autocast():
            loss = (net(x) - 1.0).pow(2).mean()
        optimizer_step(opt, loss)
        losses.append(float(loss.detach()))
        loop.done(step, {"loss": f"{losses[-1]:.3f}"}, losses=losses)
    return net, losses


def test_a_resumed_loop_starts_where_the_checkpoint_stopped_and_ends_identical(tmp_path):
    ref, ref_losses = _run(FitCheckpoint(None), 6)
    assert len(ref_losses) == 6 and ref_losses[-1] < ref_losses[0]
    _run(FitCheckpoint(tmp_path, "k", every=2), 6, stop=3)  # stops after step 3 of 6; checkpoint holds step 2
    assert FitCheckpoint(tmp_path, "k").stage("toy", modules={}).start == 2
    net, losses = _run(FitCheckpoint(tmp_path, "k", every=2), 6)
    assert losses == ref_losses
    assert torch.equal(net.weight, ref.weight) and torch.equal(net.bias, ref.bias)


def test_default_precision_is_plain_fp32_and_bf16_is_an_option():
    loop = FitLoop("toy", 1)
    assert loop.precision is None
    with loop.autocast():
        assert not torch.is_autocast_enabled("cpu") and torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with FitLoop("toy", 1, precision=torch.bfloat16).autocast():  # a tiny op only: bf16 is slow on AVX2 CPUs
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


def test_seconds_and_tail_mean():
    loop = FitLoop("toy", 3)
    assert list(loop) == [0, 1, 2] and loop.seconds >= 0.0
    assert tail_mean([5.0] * 10 + [1.0]) == 1.0 and tail_mean([]) != tail_mean([])  # NaN when empty
