"""The target-domain methods (issue 41): each runs end to end on tiny data, takes its images from
``MethodContext.target`` (not the same-domain pool), and refuses to run without them."""

from __future__ import annotations

import json

import pytest
import torch

from segsynth.data.case import Case
from segsynth.errors import ConfigError
from segsynth.generators import METHODS, get_method
from segsynth.generators.base import MethodContext
from segsynth.segment.train import TrainConfig
from tests.generators.brainspade.helpers import IMAGE_OPTS, INFO, K, _cases, _target

TARGET_METHODS = ["spade_target", "fixmatch_target", "spade_target+fixmatch"]
SPADE = {"n_synthetic": 6, **{k: v for k, v in IMAGE_OPTS.items() if k != "num_classes"}}
FIXMATCH = {"threshold": 0.0}  # every pixel pseudo-labelled: the unlabelled loss is never empty in 3 steps


def _options(name):
    return {**(SPADE if "spade" in name else {}), **(FIXMATCH if "fixmatch" in name else {})}


def _ctx(tmp_path, target, **kw):
    cases = _cases(5)
    pool = [Case(f"pool{i}", c.image, None, dict(c.meta)) for i, c in enumerate(_cases(3))]  # same domain
    return MethodContext(info=INFO, train=cases[:3], val=cases[3:], unlabelled=pool, target=target,
                         segmenter_kwargs={"features": (4, 4, 8, 8, 8, 4)},
                         train_config=TrainConfig(steps=3, batch_size=2, val_every=3, progress=False),
                         workdir=tmp_path / "run", **kw)


def test_registered_with_target_in_their_names():
    for name in [*TARGET_METHODS, "domain_rand_aug"]:
        assert name in METHODS and get_method(name).name == name
    assert all("target" in n for n in TARGET_METHODS)
    assert all(get_method(n).needs_target for n in TARGET_METHODS)
    assert not getattr(get_method("domain_rand_aug"), "needs_target", False)
    assert get_method("spade_target").option_values()["fit_on_target"] is True
    with pytest.raises(ConfigError, match="always 'target'"):
        get_method("spade_target", style="source")
    with pytest.raises(ConfigError, match="augment_real is always true"):
        get_method("domain_rand_aug", augment_real=False)
    with pytest.raises(ConfigError, match="unknown options"):
        get_method("spade_target", nonsense=1)


@pytest.mark.parametrize("name", TARGET_METHODS)
def test_without_target_images_a_method_stops_before_training_with_one_line(name, tmp_path):
    ctx = _ctx(tmp_path, target=[])
    with pytest.raises(ConfigError, match="pass --target-unlabelled DIR") as e:
        get_method(name, **_options(name)).run(ctx)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing fitted, nothing checkpointed


@pytest.mark.parametrize("fit_on_target", [True, False])
def test_spade_target_paints_every_pair_with_a_target_style(tmp_path, fit_on_target):
    target = _target(3)
    ctx = _ctx(tmp_path, target)
    method = get_method("spade_target", **SPADE, fit_on_target=fit_on_target)
    result = method.run(ctx)
    assert result.model(torch.as_tensor(ctx.train[0].image)[None]).shape == (1, K, 32, 32)
    pairs = method._synthetic
    assert len(pairs) == 6
    assert {p.meta["style_source"] for p in pairs} <= {t.case_id for t in target}  # never a source or pool image
    assert {p.meta["style_domain"] for p in pairs} == {"target-site"}
    stats = json.loads((tmp_path / "run" / "generator" / "fit_stats.json").read_text())
    # fitted on the target images too (modality classifier + target-styled fakes), or on the source pairs only
    assert stats["n_target"] == (3 if fit_on_target else 0)
    assert stats["classifier"]["used"] is fit_on_target
    assert stats["domains"][1:] == (["target-site"] if fit_on_target else [])
    parts = method.montage_cases(ctx, result)
    assert parts["target"] == target and parts["synthetic"] == pairs


def test_fixmatch_target_learns_from_the_target_images_not_the_pool(tmp_path):
    target = _target(3)
    ctx = _ctx(tmp_path, target)
    method = get_method("fixmatch_target", **FIXMATCH)
    hook = method.build_hook(ctx)
    assert hook.stream.source.case_ids == ["t0", "t1", "t2"]
    assert get_method("fixmatch", **FIXMATCH).build_hook(ctx).stream.source.case_ids == ["pool0", "pool1", "pool2"]
    result = method.run(ctx)
    assert result.history and "fixmatch_loss" in result.history[-1]
    parts = method.montage_cases(ctx, result)
    assert parts["model"] is result.model and parts["target"] == target and parts["synthetic"] == []


def test_spade_target_with_fixmatch_uses_the_target_images_for_both(tmp_path):
    target = _target(3)
    ctx = _ctx(tmp_path, target)
    method = get_method("spade_target+fixmatch", **SPADE, **FIXMATCH)
    assert method.inner.name == "spade_target"
    assert method.build_hook(ctx).stream.source.case_ids == ["t0", "t1", "t2"]
    result = method.run(ctx)
    assert "fixmatch_loss" in result.history[-1]
    pairs = method.inner._synthetic
    assert pairs and {p.meta["style_source"] for p in pairs} <= {"t0", "t1", "t2"}
    parts = method.montage_cases(ctx, result)
    assert parts["synthetic"] == pairs and parts["model"] is result.model


def test_domain_rand_aug_augments_both_streams_and_runs(tmp_path):
    method = get_method("domain_rand_aug")
    assert method.mix.augment_real is True and method.option_values()["augment_real"] is True
    result = method.run(_ctx(tmp_path, target=[]))  # needs no target images
    assert result.model is not None


def test_the_montage_shows_target_images_beside_the_pairs_painted_in_their_style(tmp_path):
    from PIL import Image

    from segsynth.experiments.target_montage import save_target_montage

    target = _target(3)
    ctx = _ctx(tmp_path, target)
    method = get_method("spade_target+fixmatch", **SPADE, **FIXMATCH)
    result = method.run(ctx)
    path = save_target_montage(method.montage_cases(ctx, result), tmp_path / "m.png", spatial_dims=2, k=3)
    w, h = Image.open(path).size
    assert w > 100 and h > 300  # 3 columns; source image + mask, target, painted image + mask, prediction
