"""GenSeg under bf16 autocast: GAN forwards and rendering in bf16, losses and the hypergradient in fp32."""

import dataclasses

import torch

from segsynth.generators.genseg import (
    GeneratedSource,
    GenSegGenerator,
    GenSegOptions,
    train_genseg,
)
from tests.conftest import conv_output_dtypes
from tests.generators.genseg.helpers import TINY, TINY_OPTS, _blob_context, _cases, _gan_trainer


def test_a_bf16_gan_step_runs_its_forwards_in_bf16_and_keeps_fp32_weights():
    gen, gan, (x, y) = _gan_trainer()
    gen.precision = torch.bfloat16
    g_seen, d_seen = conv_output_dtypes(gen.net), conv_output_dtypes(gen.disc)
    before = {k: v.clone() for k, v in gen.net.state_dict().items()}
    alpha = [a.detach().clone() for a in gen.net.arch_parameters()]
    parts = gan.step(x, y, torch.Generator().manual_seed(0))
    assert set(g_seen) == {torch.bfloat16} and set(d_seen) == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert all(p.dtype == torch.float32 for p in gen.net.parameters())
    assert any(not torch.equal(before[k], v) for k, v in gen.net.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(alpha, gen.net.arch_parameters()))
    # the same step in fp32 stays in fp32
    gen.precision = None
    g_seen.clear()
    gan.step(x, y, torch.Generator().manual_seed(0))
    assert set(g_seen) == {torch.float32}


def test_generated_pairs_are_rendered_in_the_generators_precision_and_returned_in_fp32():
    gen = GenSegGenerator(**TINY)
    cases = _cases()
    gen.fit(cases, seed=0, steps=1)
    gen.precision = torch.bfloat16
    seen = conv_output_dtypes(gen.net)
    x, y = GeneratedSource(gen, gen.source).draw(2, torch.Generator().manual_seed(1))
    assert set(seen) == {torch.bfloat16}
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_train_genseg_takes_the_segmenters_precision_and_keeps_the_hypergradient_fp32(tmp_path, monkeypatch):
    import segsynth.generators.genseg.hook as hook

    ctx = _blob_context(tmp_path)
    ctx.train_config = dataclasses.replace(ctx.train_config, precision="bf16")
    autocast_on_in_arch_step = []
    real_hypergradient = hook.architecture_hypergradient

    def spy(*args, **kwargs):
        autocast_on_in_arch_step.append(torch.is_autocast_enabled("cpu"))
        return real_hypergradient(*args, **kwargs)

    monkeypatch.setattr(hook, "architecture_hypergradient", spy)
    result, gen = train_genseg(ctx, GenSegOptions(**TINY_OPTS, arch_every=1, save_generator=False))
    assert gen.precision == torch.bfloat16 and result.precision == "bf16"
    assert autocast_on_in_arch_step and not any(autocast_on_in_arch_step)
    assert all(torch.isfinite(p).all() for p in gen.net.parameters())
    assert all(torch.isfinite(a).all() for a in gen.net.arch_parameters())


def test_cli_synthesize_renders_in_the_asked_precision_and_records_it(tmp_path, monkeypatch):
    import json

    from segsynth.cli import main
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from tests.conftest import write_png_dataset

    data = write_png_dataset(tmp_path / "blobs", n=3)
    loaded = load_dataset(data, PreprocessSpec(size=32), progress=False)
    gen = GenSegGenerator(**TINY)
    gen.build_for(loaded.cases, seed=0, info=loaded.info)
    gen.save(tmp_path / "model")
    seen = []
    real_generate = GenSegGenerator.generate

    def spy(self, *a, **kw):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return real_generate(self, *a, **kw)

    monkeypatch.setattr(GenSegGenerator, "generate", spy)
    out = tmp_path / "syn"
    assert main(["synthesize", "--model", str(tmp_path / "model"), "--masks", str(data / "masks"), "--out", str(out),
                 "--device", "cpu", "--precision", "bf16", "-q"]) == 0
    assert seen and set(seen) == {torch.bfloat16}
    assert json.loads((out / "dataset.json").read_text())["synthetic"]["precision"] == "bf16"
    assert len(load_dataset(out, PreprocessSpec(size=None), progress=False).cases) == 3
    seen.clear()
    assert main(["synthesize", "--model", str(tmp_path / "model"), "--masks", str(data / "masks"),
                 "--out", str(tmp_path / "syn32"), "--device", "cpu", "-q"]) == 0
    assert set(seen) == {False}  # fp32 by default: no autocast
