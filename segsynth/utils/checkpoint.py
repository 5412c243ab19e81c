"""Reading a training checkpoint (``.pt``) safely, with one rule for every loop that resumes.

Checkpoints load with ``torch.load(weights_only=True)``: only tensors, numbers, strings and containers come
back and no pickled code runs. A file that is not like that (written by something else, or damaged) raises a
``DataError`` naming it, so the caller decides: the segmenter's loop (``segment/train.py``) stops with that one
line, the generators' stage checkpoints (``generators/fit_checkpoint.py``) log it and train the stage afresh.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from segsynth.errors import DataError


def load_checkpoint(path: str | Path) -> Any:
    """The contents of the checkpoint at ``path``, loaded weights-only on the CPU.

    Raises:
        DataError: the file holds more than weights (a weights-only load refuses it; nothing in it ran) or
            cannot be read at all.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError("not a checkpoint segsynth wrote: it holds Python objects that a safe (weights-only) load "
                        "refuses, and nothing in it was run; delete it to start afresh", path) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, zipfile errors, ... on damage
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"cannot read the checkpoint ({type(e).__name__}{': ' + first if first else ''}); "
                        "delete it to start afresh", path) from e
