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


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str | Path,
                      what: str = "weights") -> None:
    """``module.load_state_dict(state)`` (strict); saved weights that do not fit the module built from the saved
    configuration raise a one-line ``DataError`` naming ``where`` and the first mismatches (torch's own
    message spreads one mismatch per line)."""
    from segsynth.errors import DataError

    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"{what} do not fit the saved configuration: {state_mismatch(module, state, e)}",
                        where) from e


def state_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor], error: Exception | None = None) -> str:
    """One line saying how ``state`` differs from ``module``'s own tensors: shapes first, then missing and
    unexpected names (at most two problems, and how many more)."""
    own = module.state_dict()
    problems = [f"{k} is {tuple(state[k].shape)} in the weights but {tuple(v.shape)} in the configuration"
                for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the weights (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in the weights have no place (first: {unexpected[0]})")
    if not problems:
        return " ".join(str(error).split()) if error is not None else "no difference found"
    more = len(problems) - 2
    return "; ".join(problems[:2]) + (f"; and {more} more" if more > 0 else "")
