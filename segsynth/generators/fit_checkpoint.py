"""Resumable generator training: periodic, atomic checkpoints of the stages of one ``fit``.

A ``fit`` made of several training loops (stages) opens one ``FitCheckpoint`` on a folder, with a key
(``fingerprint`` of the configuration, seed and training data), and each loop declares what it trains:

    stage = ckpt.stage("label_autoencoder", modules={"ae": ae}, optimizers={"ae": opt}, generators={"data": g})
    saved = stage.restore()                      # {} when starting afresh
    history = saved.get("history", [])
    for step in range(stage.start, steps):
        ...                                      # one optimisation step, drawing from g
        history.append(loss)
        stage.after_step(step + 1, steps, history=history)

Every ``every`` steps and at the last step, ``<folder>/<stage>.pt`` is written atomically with the state_dicts
of the modules and optimisers, the states of the ``torch.Generator`` objects, the step reached and the
JSON-able extras (loss histories, derived numbers). A rerun restores them and continues from that step, so
it ends with the weights an uninterrupted run would have (same device, deterministic kernels). A finished
stage (``stage.finished(steps)``) can be skipped whole. A checkpoint written with another key (changed
configuration, seed or data) is ignored with a warning and the stage starts afresh. Files load with
``segsynth.utils.checkpoint.load_checkpoint`` (``torch.load(..., weights_only=True)``): only tensors, numbers,
strings and containers are stored; a file that is not like that is ignored with a warning too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segsynth.errors import ConfigError, DataError
from segsynth.utils.checkpoint import load_checkpoint
from segsynth.utils.files import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of a stage file changes


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts and tensors (a tensor counts by dtype, shape and content)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(f"tensor|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


class FitCheckpoint:
    """The checkpoints of one ``fit``: one file per stage in ``directory`` (``None``: off, nothing written).

    Args:
        directory: folder of the stage files (created on the first save), or None.
        key: fingerprint of everything the result depends on (configuration, seed, data).
        every: save every this many steps (and at the last step of each stage).
    """

    def __init__(self, directory: str | Path | None, key: str = "", every: int = 100):
        if int(every) < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {every}")
        self.directory = None if directory is None else Path(directory)
        self.key = key
        self.every = int(every)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def stage(self, name: str, *, modules: Mapping[str, torch.nn.Module],
              optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
              generators: Mapping[str, torch.Generator] | None = None) -> StageCheckpoint:
        """The checkpoint of one training loop and of the objects whose state it saves and restores."""
        path = None if self.directory is None else self.directory / f"{name}.pt"
        return StageCheckpoint(name, path, self.key, self.every, dict(modules), dict(optimizers or {}),
                               dict(generators or {}))


class StageCheckpoint:
    """One training loop's checkpoint file: read once (lazily), restored on demand, written every ``every`` steps."""

    def __init__(self, name: str, path: Path | None, key: str, every: int, modules: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], generators: dict[str, torch.Generator]):
        self.name, self.path, self.key, self.every = name, path, key, every
        self.modules, self.optimizers, self.generators = modules, optimizers, generators
        self._saved: dict[str, Any] | None = None
        self._read_done = False

    # ------------------------------------------------------------------------------------------ reading

    @property
    def saved(self) -> dict[str, Any] | None:
        """The stored checkpoint when there is a usable one (right key), else None."""
        if not self._read_done:
            self._saved = self._read()
            self._read_done = True
        return self._saved

    def _read(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            ck = load_checkpoint(self.path)
        except DataError as e:  # written by something else, or damaged: this stage starts afresh
            log.warning("ignoring %s; training stage %s afresh", e, self.name)
            return None
        if not isinstance(ck, dict) or ck.get("format") != FORMAT or ck.get("stage") != self.name:
            log.warning("ignoring checkpoint %s: not a stage checkpoint of this version; training stage %s afresh",
                        self.path, self.name)
            return None
        if ck.get("key") != self.key:
            log.warning("ignoring checkpoint %s: it was written with another configuration, seed or training data; "
                        "training stage %s afresh", self.path, self.name)
            return None
        return ck

    @property
    def start(self) -> int:
        """The step to continue from (0 without a usable checkpoint)."""
        return int(self.saved["step"]) if self.saved is not None else 0

    def finished(self, total: int) -> bool:
        """Whether a checkpoint of the whole stage (``total`` steps) exists."""
        return self.saved is not None and self.start >= total

    def restore(self) -> dict[str, Any]:
        """Load the saved states into the modules, optimisers and generators; return the saved extras ({} if none)."""
        ck = self.saved
        if ck is None:
            return {}
        for n, m in self.modules.items():
            m.load_state_dict(ck["modules"][n])
        for n, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][n])
        for n, g in self.generators.items():
            g.set_state(ck["generators"][n])
        log.info("%s: resumed from %s at step %d", self.name, self.path, self.start)
        return json.loads(ck["extras"])

    # ------------------------------------------------------------------------------------------ writing

    def after_step(self, step: int, total: int, **extras: Any) -> None:
        """Save when ``step`` (steps done) is a multiple of ``every`` or the last one; ``extras``: JSON-able."""
        if self.path is not None and (step % self.every == 0 or step >= total):
            self.save(step, **extras)

    def save(self, step: int, **extras: Any) -> None:
        """Write the checkpoint atomically: a kill leaves the previous one or this one, never half of one."""
        if self.path is None:
            return
        ck = {
            "format": FORMAT, "stage": self.name, "key": self.key, "step": int(step),
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "generators": {n: g.get_state() for n, g in self.generators.items()},
            "extras": json.dumps(extras),
        }
        with atomic_path(self.path) as tmp:
            torch.save(ck, tmp)
        self._saved, self._read_done = None, False  # read back from the file if asked again
