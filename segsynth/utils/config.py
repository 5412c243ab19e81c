"""The constructor signature is the configuration: save init args as JSON beside the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from segsynth.utils.files import atomic_path, read_json_object, write_json


def save_module(module: torch.nn.Module, directory: str | Path, config: dict[str, Any], name: str = "model") -> None:
    """Write `<name>.safetensors` + `<name>.json` (config) atomically into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (e.g. DynUNet's deep-supervision heads)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(directory / f"{name}.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / f"{name}.json", config)


def load_state(directory: str | Path, name: str = "model") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights (safetensors: no code execution) and the config saved by `save_module`."""
    from segsynth.errors import DataError

    directory = Path(directory)
    wpath, cpath = directory / f"{name}.safetensors", directory / f"{name}.json"
    for p in (wpath, cpath):
        if not p.exists():
            raise DataError("missing model file (was the model saved here?)", p)
    try:
        state = load_file(str(wpath))
    except Exception as e:  # corrupt or truncated
        raise DataError(f"cannot read weights: {e}", wpath) from e
    return state, read_json_object(cpath, "the model configuration")
