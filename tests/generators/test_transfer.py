"""Transfer learning: merged label spaces, pretraining, strict init loading (final layer excepted), method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsynth.data.case import DatasetInfo
from segsynth.errors import ConfigError, DataError
from segsynth.generators import get_method
from segsynth.generators.base import MethodContext
from segsynth.generators.transfer import (
    PretrainData,
    encoder_keys,
    harmonise,
    head_keys,
    load_pretrained,
    merge_label_spaces,
    pretrain,
    read_pretrain_labels,
)
from segsynth.nets.segmenters import build_segmenter
from segsynth.segment.train import TrainConfig
from tests.conftest import make_blob_case

FEATURES = (4, 4, 8, 8, 16, 4)
CFG = TrainConfig(steps=2, batch_size=2, val_every=2, progress=False)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    a = PretrainData("blobs2", [make_blob_case(f"a{i}", (32, 32), seed=i, num_classes=2) for i in range(3)],
                     {0: "bg", 1: "blob"})
    b = PretrainData("blobs3", [make_blob_case(f"b{i}", (24, 24), channels=3, seed=i, num_classes=3)
                                for i in range(3)], {0: "bg", 1: "x", 2: "y"})
    res = pretrain([a, b], out, spatial_dims=2, in_channels=1, shape=(32, 32), segmenter_kwargs={"features": FEATURES},
                   train_config=CFG, seed=0)
    return res


def test_label_spaces_are_merged_without_collisions():
    a = PretrainData("A", [make_blob_case("a", (16, 16), num_classes=3)], {0: "bg", 1: "p", 2: "q"})
    b = PretrainData("B", [make_blob_case("b", (16, 16), num_classes=2)], {0: "bg", 1: "p"})
    labels, (ca, cb) = merge_label_spaces([a, b])
    assert labels == {0: "background", 1: "A/p", 2: "A/q", 3: "B/p"}
    assert set(np.unique(cb[0].mask).tolist()) == {0, 3}
    assert set(np.unique(ca[0].mask).tolist()) <= {0, 1, 2}
    rgb = harmonise(make_blob_case("c", (20, 24), channels=3), 1, (32, 32))
    assert rgb.image.shape == (1, 32, 32) and rgb.mask.shape == (32, 32)


def test_pretrain_saves_a_segmenter_with_the_merged_labels(pretrained):
    assert pretrained.labels == {0: "background", 1: "blobs2/blob", 2: "blobs3/x", 3: "blobs3/y"}
    assert (pretrained.out_dir / "model.safetensors").exists()
    assert read_pretrain_labels(pretrained.out_dir) == pretrained.labels
    from segsynth.segment.model_io import load_segmenter

    model, cfg = load_segmenter(pretrained.out_dir)  # a normal segsynth model folder
    assert cfg["segmenter"]["out_channels"] == 4 and "pretrain" in cfg


def test_init_loads_everything_but_a_mismatched_final_layer(pretrained):
    from segsynth.utils.config import load_state

    state, _ = load_state(pretrained.out_dir)
    model = build_segmenter("unet", 2, 1, 3, features=FEATURES)  # target: 3 classes, pretrained: 4
    report = load_pretrained(model, pretrained.out_dir)
    assert sorted(report["reinitialised_head"]) == ["final_conv.bias", "final_conv.weight"]
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith("final_conv"):
            assert torch.equal(own[k], v), k
    assert report["loaded"] == len(own) - 2
    # a .safetensors path works too
    load_pretrained(build_segmenter("unet", 2, 1, 4, features=FEATURES), pretrained.out_dir / "model.safetensors")


def test_encoder_only_leaves_the_decoder_alone(pretrained):
    from segsynth.utils.config import load_state

    state, _ = load_state(pretrained.out_dir)
    torch.manual_seed(123)
    model = build_segmenter("unet", 2, 1, 4, features=FEATURES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_pretrained(model, pretrained.out_dir, part="encoder")
    enc = encoder_keys(model)
    assert enc and all(k.split(".")[0] in ("conv_0", "down_1", "down_2", "down_3", "down_4") for k in enc)
    for k, v in model.state_dict().items():
        expected = state[k] if k in enc else before[k]
        assert torch.equal(v, expected), k


def test_mismatches_outside_the_final_layer_are_errors(pretrained, tmp_path):
    with pytest.raises(ConfigError, match="shape mismatch"):
        load_pretrained(build_segmenter("unet", 2, 3, 4, features=FEATURES), pretrained.out_dir)  # RGB input
    with pytest.raises(ConfigError):
        load_pretrained(build_segmenter("unet", 2, 1, 4, features=(8, 8, 8, 8, 16, 8)), pretrained.out_dir)
    with pytest.raises(ConfigError):
        load_pretrained(build_segmenter("dynunet", 2, 1, 4, levels=3), pretrained.out_dir)
    with pytest.raises(ConfigError):
        load_pretrained(build_segmenter("unet", 3, 1, 4, features=FEATURES), pretrained.out_dir)
    with pytest.raises(ConfigError, match="local"):
        load_pretrained(build_segmenter("unet", 2, 1, 4, features=FEATURES), "https://example.org/model")
    with pytest.raises(DataError):
        load_pretrained(build_segmenter("unet", 2, 1, 4, features=FEATURES), tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError):
        load_pretrained(build_segmenter("unet", 2, 1, 4, features=FEATURES), pretrained.out_dir, part="decoder")


def test_dynunet_heads_and_aliased_encoder_keys(tmp_path):
    import json

    from safetensors.torch import save_file

    src = build_segmenter("dynunet", 2, 1, 5, levels=3)
    # DynUNet lists its modules twice (skip_layers); safetensors needs unshared copies
    save_file({k: v.detach().clone() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({"segmenter": {**src.segsynth_config, "kwargs": {"levels": 3}}}))
    dst = build_segmenter("dynunet", 2, 1, 2, levels=3)
    assert head_keys(dst) >= {"output_block.conv.conv.weight"}
    report = load_pretrained(dst, tmp_path, part="encoder")
    assert report["loaded"] > 0
    x = torch.randn(1, 1, 16, 16)
    src.eval()
    dst.eval()
    with torch.no_grad():  # the shared encoder now computes the same features
        assert torch.allclose(src.input_block(x), dst.input_block(x))


def test_transfer_method_fine_tunes_and_needs_init(pretrained, tmp_path):
    cases = [make_blob_case(f"c{i}", (32, 32), seed=i, num_classes=3) for i in range(3)]
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "other", 2, 1)
    ctx = MethodContext(info=info, train=cases[:2], val=cases[2:], segmenter_kwargs={"features": FEATURES},
                        train_config=CFG, workdir=tmp_path / "run")
    res = get_method("transfer", init=str(pretrained.out_dir)).run(ctx)
    assert res.steps == 2 and (tmp_path / "run" / "transfer_init.json").exists()
    with pytest.raises(ConfigError):
        get_method("transfer").run(ctx)
    with pytest.raises(ConfigError):
        get_method("transfer", init="x", parts="all")
