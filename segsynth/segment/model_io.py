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
from segsynth.utils.config import load_state, save_module


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
    if not seg:
        raise DataError("model.json has no 'segmenter' entry: not a segsynth segmenter folder", directory)
    model = build_segmenter(seg["name"], seg["spatial_dims"], seg["in_channels"], seg["out_channels"],
                            **seg.get("kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"weights do not fit the saved configuration: {e}", directory) from e
    return model.to(device).eval(), config
