"""Save and load a trained segmenter with everything needed to use it on new images.

A model folder holds ``model.safetensors`` (weights; loading runs no code) and ``model.json`` (segmenter
config, dataset info with class names, preprocessing spec, training config, validation Dice).
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from segsynth.data.case import DatasetInfo
from segsynth.errors import DataError
from segsynth.nets.segmenters import build_segmenter
from segsynth.utils.config import load_module_state, load_state, save_module


def save_segmenter(model: torch.nn.Module, directory: str | Path, info: DatasetInfo, spec: Any = None,
                   extra: dict[str, Any] | None = None, segmenter_kwargs: dict[str, Any] | None = None) -> Path:
    cfg = dict(getattr(model, "segsynth_config", {}))
    if not cfg:
        raise ValueError("model was not built by build_segmenter; cannot record how to rebuild it")
    config = {
        "segmenter": {**cfg, "kwargs": segmenter_kwargs or {}},
        "info": info.to_json(),
        "spec": asdict(spec) if is_dataclass(spec) else spec,
        **(extra or {}),
    }
    save_module(model, directory, config, name="model")
    return Path(directory)


def load_segmenter(directory: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    state, config = load_state(directory, name="model")
    seg = config.get("segmenter")
    if not isinstance(seg, dict) or not seg:
        raise DataError("model.json has no 'segmenter' entry: not a segsynth segmenter folder", directory)
    missing = [k for k in ("name", "spatial_dims", "in_channels", "out_channels") if k not in seg]
    if missing or not isinstance(config.get("info"), dict) or "spec" not in config:
        raise DataError(f"model.json lacks {', '.join(missing) or 'info/spec'}: not a segsynth model folder, or "
                        "written by another version", Path(directory) / "model.json")
    model = build_segmenter(seg["name"], seg["spatial_dims"], seg["in_channels"], seg["out_channels"],
                            **seg.get("kwargs", {}))
    load_module_state(model, state, directory)
    return model.to(device).eval(), config


def check_input_fits(config: dict, spatial_dims: int, in_channels: int, data: str | Path,
                     model_dir: str | Path) -> None:
    """Refuse images the saved model cannot take: 2D vs 3D, or grey vs colour (one line naming both).

    A 2D model trained on slices of 3D volumes takes 3D volumes (sliced) and 2D images alike.

    Raises:
        DataError: naming ``data``.
    """
    seg, spec = config["segmenter"], config.get("spec") or {}
    mdims, mch = int(seg["spatial_dims"]), int(seg["in_channels"])
    accepted = {2, 3} if mdims == 2 and spec.get("spatial_dims") == 2 else {mdims}
    if spatial_dims not in accepted:
        raise DataError(f"these are {spatial_dims}D images but the model ({model_dir}) is a {mdims}D model trained "
                        f"on {mdims}D images", data)
    if in_channels != mch:
        def kind(c: int) -> str:
            return {1: "grey (1 channel)", 3: "RGB (3 channels)"}.get(c, f"{c}-channel")
        raise DataError(f"these images are {kind(in_channels)} but the model ({model_dir}) was trained on "
                        f"{kind(mch)} images", data)
