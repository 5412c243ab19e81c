"""Mean teacher and FixMatch: hooks of the one training loop, 2D and 3D, exact EMA, thresholding, resume."""

import pytest
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import ConfigError
from segsynth.generators import METHODS, get_method
from segsynth.generators.base import Method, MethodContext
from segsynth.generators.semi_supervised import consistency
from segsynth.generators.semi_supervised.consistency import (
    UnlabelledStream,
    apply_flips,
    cutmix_boxes,
    draw_flips,
    gaussian_blur,
    sigmoid_rampup,
)
from segsynth.generators.semi_supervised.fixmatch import FixMatchHook, pseudo_label_loss
from segsynth.generators.semi_supervised.mean_teacher import MeanTeacherHook, ema_update
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.sources import CaseSource
from segsynth.segment.train import StepState, TrainConfig, train_segmenter
from tests.conftest import make_blob_case

FEAT = {"features": (8, 8, 16, 16, 32, 8)}
SHAPES = {2: (32, 32), 3: (32, 32, 32)}


def _cases(dims, n=8):
    return [make_blob_case(f"c{i}", SHAPES[dims], seed=i) for i in range(n)]


def _unlabelled(cases):
    return [Case(c.case_id, c.image, None, {}) for c in cases]


def _ctx(dims, steps=4, **kw):
    cases = _cases(dims)
    kw.setdefault("unlabelled", _unlabelled(cases[3:]))
    info = DatasetInfo(name="blobs", labels={0: "background", 1: "blob"}, modality="other", spatial_dims=dims,
                       in_channels=1)
    cfg = TrainConfig(steps=steps, batch_size=2, val_every=steps, progress=False)
    return MethodContext(info=info, train=cases[:2], val=cases[2:3], segmenter_kwargs=dict(FEAT), train_config=cfg, seed=0, **kw)


def _model(dims=2, seed=0):
    torch.manual_seed(seed)
    return build_segmenter("unet", dims, 1, 2, **FEAT)


def _hook(kind, unlabelled, dims=2, **kw):
    cls = MeanTeacherHook if kind == "mean_teacher" else FixMatchHook
    return cls(unlabelled, spatial_dims=dims, seed=0, batch_size=2, **kw)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch"])
def test_method_runs_with_a_nonzero_unlabelled_loss(method, dims):
    opts = {"threshold": 0.5} if method == "fixmatch" else {"rampup": 0.0}
    res = get_method(method, **opts).run(_ctx(dims, steps=3))
    assert len(res.history) == 3
    losses = [h[f"{method}_loss"] for h in res.history]
    assert all(v > 0 for v in losses)
    assert all(h["loss"] > 0 for h in res.history)  # the supervised loss is recorded on its own


@pytest.mark.parametrize("kind", ["mean_teacher", "fixmatch"])
def test_unlabelled_loss_has_gradient_and_decreases_when_optimised(kind):
    """The unlabelled term alone trains the student: on a fixed step's batch, 15 Adam steps lower it."""
    unl = _unlabelled(_cases(2))
    opts = {"threshold": 0.0} if kind == "fixmatch" else {}
    hook = _hook(kind, unl, **opts)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(15):
        loss = hook.extra_loss(model, step=7, device=torch.device("cpu"))  # same step: same images and views
        opt.zero_grad()
        loss.backward()
        grad = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
        assert grad > 0
        opt.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.8 * values[0]


def test_ema_update_is_exact_and_teacher_lags_the_student():
    student, teacher = _model(seed=0), _model(seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for k, t in teacher.state_dict().items():
        assert torch.allclose(t, 0.9 * before[k] + 0.1 * student.state_dict()[k], atol=1e-7)

    hook = _hook("mean_teacher", _unlabelled(_cases(2)), ema_decay=0.99)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hook.extra_loss(model, 0, torch.device("cpu")).backward()
    opt.step()
    old = {k: v.clone() for k, v in hook.teacher.state_dict().items()}
    for step, alpha in ((1, 0.5), (200, 0.99)):  # alpha = min(1 - 1 / (step + 1), decay)
        old = {k: v.clone() for k, v in hook.teacher.state_dict().items()}
        hook.after_step(StepState(step, model, opt, None, None, 0.0, torch.device("cpu"), 0.1))
        for k, t in hook.teacher.state_dict().items():
            assert torch.allclose(t, alpha * old[k] + (1 - alpha) * model.state_dict()[k], atol=1e-7)
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(hook.teacher.parameters(), model.parameters()))
    assert diff > 0  # the teacher is an average, not a copy
    assert not any(p.requires_grad for p in hook.teacher.parameters())


def test_threshold_masks_low_confidence_pixels():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    pseudo = torch.zeros(1, 4, 4, dtype=torch.long)
    conf = torch.full((1, 4, 4), 0.99)
    conf[0, :2] = 0.5  # the top half is not confident
    loss, keep = pseudo_label_loss(logits, pseudo, conf, threshold=0.95)
    assert keep.sum() == 8 and not keep[0, :2].any()
    loss.backward()
    assert torch.all(logits.grad[0, :, :2] == 0) and torch.all(logits.grad[0, :, 2:] != 0)
    ce = torch.nn.functional.cross_entropy(logits.detach(), pseudo, reduction="none")
    assert float(loss.detach()) == pytest.approx(float(ce[0, 2:].sum() / 16))
    assert float(pseudo_label_loss(logits.detach(), pseudo, conf, threshold=1.0)[0]) == 0.0


@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch"])
def test_resume_after_kill_ends_identically(tmp_path, method):
    class Kill:
        def after_step(self, state):
            if state.step == 5:
                raise KeyboardInterrupt

    cases = _cases(2)
    cfg = TrainConfig(steps=7, batch_size=2, val_every=3, progress=False)
    src = CaseSource(cases[:2])
    opts = {"threshold": 0.6} if method == "fixmatch" else {"rampup_steps": 3}
    ref_hook = _hook(method, _unlabelled(cases[3:]), **opts)
    ref = train_segmenter(_model(), src, cases[2:3], cfg, num_classes=2, hooks=[ref_hook])
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(_model(), src, cases[2:3], cfg, num_classes=2, checkpoint_dir=tmp_path,
                        hooks=[_hook(method, _unlabelled(cases[3:]), **opts), Kill()])
    hook = _hook(method, _unlabelled(cases[3:]), **opts)
    res = train_segmenter(_model(seed=5), src, cases[2:3], cfg, num_classes=2, checkpoint_dir=tmp_path,
                          hooks=[hook])
    for a, b in zip(ref.model.state_dict().values(), res.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    key = f"{method}_loss"
    assert [h[key] for h in res.history] == pytest.approx([h[key] for h in ref.history], abs=1e-6)
    if method == "mean_teacher":
        for a, b in zip(ref_hook.teacher.state_dict().values(), hook.teacher.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6)
    torch.load(tmp_path / "last.pt", weights_only=True)


def test_unlabelled_batches_depend_on_rank_and_step_only(monkeypatch):
    stream = UnlabelledStream(_unlabelled(_cases(2)), spatial_dims=2, seed=3)
    a, _ = stream.draw(3, step=4)
    b, _ = stream.draw(3, step=4)
    c, _ = stream.draw(3, step=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    monkeypatch.setattr(consistency, "rank", lambda: 1)
    d, _ = stream.draw(3, step=4)
    assert not torch.equal(a, d)  # another DDP rank draws its own images


def test_3d_patches_flips_blur_and_cutmix():
    g = torch.Generator().manual_seed(0)
    cases = [make_blob_case(f"v{i}", (20, 18, 16), seed=i) for i in range(3)]
    stream = UnlabelledStream(_unlabelled(cases), spatial_dims=3, seed=0, patch_size=(16, 16, 16))
    x, g = stream.draw(2, step=0)
    assert x.shape == (2, 1, 16, 16, 16)
    flips = draw_flips(2, range(3), g, p=1.0)
    assert flips == [[0, 1, 2], [0, 1, 2]]
    assert torch.equal(apply_flips(apply_flips(x, flips), flips), x)
    assert torch.equal(apply_flips(x, flips)[0, 0], x[0, 0].flip([0, 1, 2]))
    blurred = gaussian_blur(x, [1.0, 0.0])
    assert blurred.shape == x.shape and torch.equal(blurred[1], x[1]) and blurred[0].std() < x[0].std()
    boxes = cutmix_boxes(4, (16, 16, 16), g, p=1.0)
    frac = boxes.float().mean(dim=(1, 2, 3))
    assert torch.all(frac > 0) and torch.all(frac < 0.5)
    assert not cutmix_boxes(4, (16, 16), g, p=0.0).any()
    assert sigmoid_rampup(0, 10) == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    assert sigmoid_rampup(10, 10) == sigmoid_rampup(50, 10) == sigmoid_rampup(3, 0) == 1.0


def test_options_and_errors():
    with pytest.raises(ConfigError, match="unlabelled"):
        get_method("fixmatch").run(_ctx(2, unlabelled=[]))
    with pytest.raises(ConfigError, match="belongs to mean_teacher"):
        get_method("fixmatch", ema_decay=0.9)
    with pytest.raises(ConfigError, match="threshold"):
        get_method("fixmatch", threshold=1.5).build_hook(_ctx(2))
    with pytest.raises(ConfigError, match="ema_decay"):
        get_method("mean_teacher", ema_decay=1.0).build_hook(_ctx(2))
    with pytest.raises(ConfigError, match="labelled"):
        get_method("fixmatch", labelled="mean_teacher")
    m = get_method("fixmatch", labelled="augment", kind="intensity", flip=True, threshold=0.9, unlabelled_batch=3)
    assert m.inner.options == {"kind": "intensity", "flip": True}
    hook = m.build_hook(_ctx(2))
    assert hook.threshold == 0.9 and hook.batch_size == 3 and hook.flip and hook.weight == 1.0
    assert get_method("mean_teacher").build_hook(_ctx(2)).weight == 10.0
    # flip is the unlabelled views' option too; a labelled stream without one (GenSeg) does not get it
    m = get_method("genseg+fixmatch", flip=True)
    assert "flip" not in m.inner.options and m.build_hook(_ctx(2)).flip


class _IgnoresHooks(Method):
    name = "ignores_hooks"

    def run(self, ctx):
        return train_segmenter(ctx.build_segmenter(), CaseSource(ctx.train), ctx.val, ctx.train_config,
                               num_classes=2)


def test_combination_with_any_method_and_refusal_when_hooks_are_ignored(monkeypatch):
    res = get_method("fixmatch", labelled="none", threshold=0.5).run(_ctx(2, steps=2))
    assert res.history[-1]["fixmatch_loss"] > 0
    monkeypatch.setitem(METHODS, "ignores_hooks", f"{__name__}:_IgnoresHooks")
    with pytest.raises(ConfigError, match="does not pass MethodContext.hooks"):
        get_method("mean_teacher", labelled="ignores_hooks").run(_ctx(2, steps=2))


def test_listed_by_segsynth_methods(capsys):
    from segsynth.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("mean_teacher", "fixmatch", "genseg+fixmatch", "genseg+mean_teacher", "brainspade+fixmatch"):
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip())


def test_sweep_leaves_split_cases_out_of_the_unlabelled_folder():
    from segsynth.experiments.sweep import drop_labelled_ids

    labelled = [Case("a", None, None, {}), Case("s1", None, None, {"volume_id": "v1"})]
    unl = [Case("a", None, None, {}), Case("b", None, None, {}), Case("s2", None, None, {"volume_id": "v1"})]
    assert [c.case_id for c in drop_labelled_ids(unl, labelled, "dir")] == ["b"]


def test_genseg_plus_fixmatch_runs_genseg_with_the_unlabelled_loss(tmp_path):
    import dataclasses

    from tests.generators.genseg.helpers import TINY_OPTS, _blob_context

    ctx = _blob_context(tmp_path)
    ctx = dataclasses.replace(ctx, unlabelled=_unlabelled(_cases(2)[4:]))
    res = get_method("genseg+fixmatch", threshold=0.5, **TINY_OPTS).run(ctx)
    keys = set().union(*res.history)
    assert {"gan_d", "arch_grad_norm", "fixmatch_loss"} <= keys  # GenSeg's own loop, plus FixMatch
    assert res.history[-1]["fixmatch_loss"] > 0
