"""Transfer learning (Med3D-style): pretrain a segmenter on heterogeneous data, fine-tune on the N labelled cases.

Pretraining (``pretrain``) takes several labelled sources: dataset folders (any of ``../shared/data``, or a
synthetic dataset written by any segsynth generator through ``DatasetWriter``) and/or extra PairSources
(e.g. domain-randomised images, ``DomainRandSource``). Their label sets are merged into one label space
(background + every source's foreground classes, named ``source/class``), images are brought to one
channel count and one size, and one segmenter is trained on them all with the project's training loop
(Med3D shares the encoder across datasets; here the whole network is shared and only the final layer is
dataset-specific at fine-tuning time). The result is saved like any segsynth segmenter
(``model.safetensors`` + ``model.json``).

Fine-tuning (the ``transfer`` method, option ``init=PATH``): the target's segmenter is built as usual and
the pretrained weights are loaded from a local folder or file only (``load_pretrained``): every tensor
must be present and have the same shape, except the final layer, which is re-initialised when the number
of classes differs. ``part="encoder"`` loads only the encoder. Then the usual training on the N cases
(classical augmentation by default), to compare with training from scratch (``augment`` / ``none``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext
from segsynth.utils.files import write_json
from segsynth.utils.seed import derive_seed, seeded_scope, torch_generator

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- encoder / head split
def _encoder_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    name = getattr(model, "segsynth_config", {}).get("name")
    if name == "unet":
        return [model.conv_0, model.down_1, model.down_2, model.down_3, model.down_4]
    if name == "dynunet":
        return [model.input_block, model.downsamples, model.bottleneck]
    if name == "deeplab":
        return [model.encoder]
    raise ConfigError(f"no encoder definition for segmenter {name!r}; use part='all'")


def _head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    name = getattr(model, "segsynth_config", {}).get("name")
    if name == "unet":
        return [model.final_conv]
    if name == "dynunet":
        return [model.output_block, *list(getattr(model, "deep_supervision_heads", []))]
    if name == "deeplab":
        return [model.decoder[-1]]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    return convs[-1:]


def _keys_of(model: torch.nn.Module, modules: Sequence[torch.nn.Module]) -> set[str]:
    """State-dict keys whose tensors belong to ``modules`` (aliases included: DynUNet lists modules twice)."""
    ptrs = {t.data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()] if t.numel()}
    return {k for k, v in model.state_dict().items() if v.numel() and v.data_ptr() in ptrs}


def head_keys(model: torch.nn.Module) -> set[str]:
    """Keys of the final (class-specific) layer(s)."""
    return _keys_of(model, _head_modules(model))


def encoder_keys(model: torch.nn.Module) -> set[str]:
    return _keys_of(model, _encoder_modules(model))


def _resolve_init(path: str | Path) -> tuple[Path, str]:
    """(folder, name) of a pretrained model: a folder with model.safetensors, or a .safetensors file."""
    text = str(path)
    if "://" in text:
        raise ConfigError(f"init={text!r}: pretrained weights are loaded from local files only (no downloads)")
    p = Path(text).expanduser()
    if p.is_dir():
        return p, "model"
    if p.suffix == ".safetensors":
        return p.parent, p.stem
    if p.suffix == ".json" and p.with_suffix(".safetensors").exists():
        return p.parent, p.stem
    raise DataError("not a pretrained model: give a folder with model.safetensors + model.json, "
                    "or the .safetensors file", p)


def load_pretrained(model: torch.nn.Module, init: str | Path, part: str = "all") -> dict[str, Any]:
    """Load pretrained weights into ``model`` in place, strictly except for the final layer.

    Args:
        model: a segmenter from ``build_segmenter``.
        init: a local folder (``model.safetensors`` + ``model.json``) or a ``.safetensors`` file with its
            ``.json`` beside it.
        part: "all" or "encoder".

    Returns:
        A report: loaded keys count, re-initialised head keys, the pretraining config.

    Raises:
        ConfigError: another segmenter type or dimensionality, a missing tensor, or a shape mismatch
            anywhere but the final layer.
    """
    from segsynth.utils.config import load_state

    if part not in ("all", "encoder"):
        raise ConfigError(f"part must be 'all' or 'encoder', got {part!r}")
    directory, name = _resolve_init(init)
    state, config = load_state(directory, name=name)
    seg = config.get("segmenter", {})
    mine = getattr(model, "segsynth_config", {})
    for key in ("name", "spatial_dims"):
        if seg.get(key) is not None and mine.get(key) is not None and seg[key] != mine[key]:
            raise ConfigError(f"init {directory / name}: pretrained {key} {seg[key]!r} does not match this "
                              f"segmenter's {mine[key]!r}")
    own = model.state_dict()
    wanted = set(own) if part == "all" else encoder_keys(model)
    heads = head_keys(model)
    missing = sorted(k for k in wanted if k not in state)
    if missing:
        raise ConfigError(f"init {directory / name}: {len(missing)} tensors missing from the pretrained weights "
                          f"(first: {missing[:3]}); is it the same architecture?")
    if part == "all":
        unexpected = sorted(k for k in state if k not in own)
        if unexpected:
            raise ConfigError(f"init {directory / name}: {len(unexpected)} pretrained tensors have no place in "
                              f"this segmenter (first: {unexpected[:3]})")
    skipped, loaded = [], 0
    bad = []
    with torch.no_grad():
        for k in sorted(wanted):
            src, dst = state[k], own[k]
            if tuple(src.shape) != tuple(dst.shape):
                if k in heads:
                    skipped.append(k)
                    continue
                bad.append(f"{k}: pretrained {tuple(src.shape)} vs {tuple(dst.shape)}")
                continue
            dst.copy_(src.to(dst.dtype))
            loaded += 1
    if bad:
        raise ConfigError(f"init {directory / name}: shape mismatch outside the final layer: " + "; ".join(bad[:3]))
    return {"init": str(directory / name), "part": part, "loaded": loaded, "reinitialised_head": skipped,
            "pretrain": config.get("pretrain", {}), "pretrained_labels": config.get("info", {}).get("labels")}


# --------------------------------------------------------------------------------------------- pretraining
@dataclass
class PretrainData:
    """One labelled source for pretraining: its name, cases and class names ({id: name}, 0 = background)."""

    name: str
    cases: list[Case]
    labels: dict[int, str]


def merge_label_spaces(sources: Sequence[PretrainData]) -> tuple[dict[int, str], list[list[Case]]]:
    """One label space: background + each source's foreground classes ("source/class"); remapped cases."""
    labels: dict[int, str] = {0: "background"}
    remapped: list[list[Case]] = []
    for src in sources:
        lut = np.zeros(max(src.labels) + 1, dtype=np.int64)
        for k, v in sorted(src.labels.items()):
            if k == 0:
                continue
            lut[k] = len(labels)
            labels[len(labels)] = f"{src.name}/{v}"
        out = []
        for c in src.cases:
            if c.mask is None:
                raise DataError("pretraining cases must be labelled", c.case_id)
            if int(c.mask.max()) >= len(lut):
                raise DataError(f"mask value {int(c.mask.max())} is not a class of {src.name}", c.case_id)
            out.append(Case(f"{src.name}/{c.case_id}", c.image, lut[c.mask], {**c.meta, "pretrain_source": src.name}))
        remapped.append(out)
    return labels, remapped


def harmonise(case: Case, in_channels: int, shape: Sequence[int]) -> Case:
    """Channels (RGB -> grey by the mean; grey -> repeated) and size (2D resize, 3D centre crop/pad)."""
    from segsynth.data.preprocess import crop_or_pad, resize_case

    image = np.asarray(case.image, dtype=np.float32)
    if image.shape[0] != in_channels:
        if in_channels == 1:
            image = image.mean(0, keepdims=True)
        elif image.shape[0] == 1:
            image = np.repeat(image, in_channels, 0)
        else:
            raise DataError(f"cannot convert {image.shape[0]} channels to {in_channels}", case.case_id)
    c = Case(case.case_id, image, case.mask, dict(case.meta))
    if tuple(c.spatial_shape) == tuple(shape):
        return c
    return resize_case(c, shape) if c.spatial_dims == 2 else crop_or_pad(c, shape)


def load_pretraining_data(roots: Sequence[str | Path], spec: Any, *, max_cases: int | None = None,
                          progress: bool = True) -> list[PretrainData]:
    """Load dataset folders (real or written by a segsynth generator) as pretraining sources."""
    from segsynth.data.dataset import load_dataset

    out = []
    names: set[str] = set()
    for root in roots:
        data = load_dataset(root, spec, max_cases=max_cases, progress=progress)
        name = data.info.name or Path(root).name
        while name in names:
            name += "_"
        names.add(name)
        out.append(PretrainData(name, data.cases, dict(data.info.labels)))
    return out


@dataclass
class PretrainResult:
    out_dir: Path
    labels: dict[int, str]
    best_val_dice: float
    seconds: float
    n_cases: dict[str, int] = field(default_factory=dict)


def pretrain(sources: Sequence[PretrainData], out_dir: str | Path, *, spatial_dims: int, in_channels: int,
             shape: Sequence[int], segmenter: str = "unet", segmenter_kwargs: dict[str, Any] | None = None,
             train_config: Any = None, device: torch.device | str = "cpu", n_val: int = 1, seed: int = 0,
             augment: bool = True, extra_sources: Sequence[tuple[Any, float]] = (),
             extra_labels: dict[int, str] | None = None) -> PretrainResult:
    """Pretrain one segmenter on several labelled sources and save it to ``out_dir`` (model folder).

    Args:
        sources: labelled datasets; label spaces are merged (``merge_label_spaces``).
        shape: working spatial shape every case is brought to.
        n_val: validation cases per source (model selection on pretraining data).
        augment: classical augmentation of the real sources.
        extra_sources: (PairSource, weight) pairs mixed in, e.g. domain-randomised pairs; their labels must
            already be in the merged label space, described by ``extra_labels`` when they add classes.
    """
    from segsynth.data.transforms import classical_augmentation
    from segsynth.nets.segmenters import build_segmenter
    from segsynth.segment.model_io import save_segmenter
    from segsynth.segment.sources import CaseSource, MixedSource
    from segsynth.segment.train import TrainConfig, train_segmenter

    if not sources and not extra_sources:
        raise ConfigError("pretraining needs at least one source")
    labels, remapped = merge_label_spaces(sources)
    for k, v in (extra_labels or {}).items():
        labels.setdefault(int(k), v)
    num_classes = max(labels) + 1
    cfg = train_config or TrainConfig()
    aug = classical_augmentation("combined", spatial_dims) if augment else None
    mixed: list[tuple[Any, float]] = []
    val: list[Case] = []
    counts: dict[str, int] = {}
    g = torch_generator(derive_seed(seed, "pretrain-val"))
    for src, cases in zip(sources, remapped):
        cases = [harmonise(c, in_channels, shape) for c in cases]
        groups: dict[str, list[Case]] = {}
        for c in cases:
            groups.setdefault(str(c.meta.get("volume_id", c.case_id)), []).append(c)
        keys = list(groups)
        order = torch.randperm(len(keys), generator=g).tolist()
        n_v = min(n_val, max(0, len(keys) - 1))
        val_keys = {keys[i] for i in order[:n_v]}
        train_cases = [c for k in keys if k not in val_keys for c in groups[k]]
        val += [c for k in val_keys for c in groups[k]][: max(1, n_v) * 4]  # a few slices per validation volume
        counts[src.name] = len(train_cases)
        # every source weighs the same, whatever its size (Med3D balances datasets)
        mixed.append((CaseSource(train_cases, transform=aug, patch_size=cfg.patch_size, num_classes=num_classes),
                      1.0))
    mixed += list(extra_sources)
    source = mixed[0][0] if len(mixed) == 1 else MixedSource(mixed)
    kwargs = dict(segmenter_kwargs or {})
    with seeded_scope(derive_seed(seed, "pretrain-init")):
        model = build_segmenter(segmenter, spatial_dims, in_channels, num_classes, **dict(kwargs))
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    result = train_segmenter(model, source, val, cfg, num_classes=num_classes, device=device,
                             checkpoint_dir=out_dir / "checkpoint")
    info = DatasetInfo(name="pretrain:" + "+".join(s.name for s in sources) if sources else "pretrain",
                       labels=labels, modality="other", spatial_dims=spatial_dims, in_channels=in_channels)
    save_segmenter(result.model, out_dir / "model", info, None, segmenter_kwargs=kwargs,
                   extra={"pretrain": {"sources": counts, "shape": list(shape), "steps": cfg.steps, "seed": seed,
                                       "val_dice": result.best_val_dice, "extra_sources": len(extra_sources)}})
    seconds = time.perf_counter() - t0
    write_json(out_dir / "pretrain.json", {"labels": labels, "cases": counts, "best_val_dice": result.best_val_dice,
                                           "seconds": seconds, "history": result.history[-20:]})
    return PretrainResult(out_dir / "model", labels, result.best_val_dice, seconds, counts)


# ---------------------------------------------------------------------------------------------- method
class TransferMethod(Method):
    """Fine-tune a pretrained segmenter on the N labelled cases.

    Options: ``init`` (required: local folder or .safetensors file from ``segsynth pretrain``), ``part``
    ("all" or "encoder"), ``augment`` (classical augmentation while fine-tuning; default True), ``lr``
    (fine-tuning learning rate; default the run's).
    """

    name: ClassVar[str] = "transfer"
    description: ClassVar[str] = "fine-tune a segmenter pretrained on other data (init=PATH, local files only)"
    defaults: ClassVar[dict[str, Any]] = {"init": None, "part": "all", "augment": True, "lr": None}
    required_options: ClassVar[tuple[str, ...]] = ("init",)

    def __init__(self, **options: Any):
        super().__init__(**options)
        if options.get("part", "all") not in ("all", "encoder"):
            raise ConfigError(f"transfer.part must be 'all' or 'encoder', got {options.get('part')!r}")

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.data.transforms import classical_augmentation
        from segsynth.segment.sources import CaseSource

        aug = classical_augmentation("combined", ctx.info.spatial_dims) if self.option_values()["augment"] \
            else None
        patch = ctx.train_config.patch_size if ctx.train_config else None
        return CaseSource(ctx.train, transform=aug, patch_size=patch, num_classes=ctx.info.num_classes)

    def run(self, ctx: MethodContext) -> Any:
        from dataclasses import replace

        from segsynth.segment.train import TrainConfig, train_segmenter

        opts = self.option_values()
        init = opts["init"]
        if not init:
            raise ConfigError("method 'transfer' needs init=PATH (a model folder written by `segsynth pretrain`), "
                              "e.g. --method-opt transfer.init=pretrained/model")
        model = ctx.build_segmenter()
        report = load_pretrained(model, init, part=str(opts["part"]))
        log.info("transfer: loaded %d pretrained tensors from %s (re-initialised: %s)", report["loaded"],
                 report["init"], report["reinitialised_head"] or "none")
        cfg = ctx.train_config or TrainConfig()
        if opts["lr"] is not None:
            cfg = replace(cfg, lr=float(opts["lr"]))
        if ctx.workdir is not None:
            write_json(Path(ctx.workdir) / "transfer_init.json", report)
        ckpt = Path(ctx.workdir) / "checkpoint" if ctx.workdir else None
        return train_segmenter(model, self.training_source(ctx), ctx.val, cfg, num_classes=ctx.info.num_classes,
                               device=ctx.device, checkpoint_dir=ckpt)


def read_pretrain_labels(init: str | Path) -> dict[int, str]:
    """Class names of a pretrained model (its merged label space)."""
    directory, name = _resolve_init(init)
    cfg = json.loads((directory / f"{name}.json").read_text())
    return {int(k): v for k, v in cfg.get("info", {}).get("labels", {}).items()}


__all__ = ["PretrainData", "PretrainResult", "TransferMethod", "encoder_keys", "harmonise", "head_keys",
           "load_pretrained", "load_pretraining_data", "merge_label_spaces", "pretrain", "read_pretrain_labels"]
