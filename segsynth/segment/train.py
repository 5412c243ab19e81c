"""The one training loop: any PairSource in, the best segmenter on the validation cases out.

* Dice + cross-entropy, AdamW, cosine learning-rate decay.
* ``precision``: ``auto`` trains (and validates) under bf16 autocast where the device runs it fast (CUDA with
  bf16, a CPU with AMX / avx512_bf16) and in fp32 elsewhere; ``fp32`` / ``bf16`` force it. Losses and metrics
  are computed in fp32. The choice is logged and returned in ``TrainResult.precision``.
* Batches are drawn ``prefetch`` steps ahead on a background thread (``Prefetcher``) when the source allows
  it; the batches are the same as drawing on the training thread. ``TrainResult.data_wait_fraction`` is the
  share of step time the loop waited for data.
* Validation Dice every ``val_every`` steps selects the best weights (never the test cases).
* Checkpoints are written atomically and loaded with ``torch.load(weights_only=True)``; a run killed at any
  point resumes from its last checkpoint and ends exactly as an uninterrupted run would. A checkpoint file
  that is not weights-only (or is damaged) stops the run with a ``DataError`` naming it.
* Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, NCCL on GPU): every rank draws its
  own batches (seeded by rank), rank 0 validates and checkpoints, and the best weights are broadcast.
* Methods that train something beside the segmenter (GenSeg's generator and architecture) plug in through
  ``hooks``: ``after_step(state)`` runs after each segmenter update, and a hook's ``state_dict()`` is saved
  in the same checkpoint. A hook with ``extra_loss(net, step, device)`` adds a term to the step's loss before
  backward (computed inside the same autocast; ``net`` is the DDP-wrapped model when distributed): the
  semi-supervised methods' unlabelled losses. ``loss`` in the history stays the supervised loss.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from segsynth.data.case import Case
from segsynth.errors import ConfigError
from segsynth.nets.segmenters import check_input_size
from segsynth.segment.inference import case_names, check_images_fit, predict_many
from segsynth.segment.losses import dice_ce_loss, soft_dice_per_class
from segsynth.segment.sources import PairSource, Prefetcher, source_statistics
from segsynth.utils.checkpoint import load_checkpoint
from segsynth.utils.config import load_module_state
from segsynth.utils.device import peak_memory_mb, reset_peak_memory, resolve_device
from segsynth.utils.files import atomic_path
from segsynth.utils.precision import (
    autocast,
    check_precision,
    describe_precision,
    full_precision,
    resolve_precision,
)
from segsynth.utils.progress import progress_bar
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    val_every: int = 50
    warmup_steps: int = 0
    patch_size: tuple[int, ...] | None = None
    seed: int = 0
    amp: bool = False  # the former CUDA-only switch (bf16 on CUDA, fp32 on CPU); kept so old configs load
    progress: bool = True
    grad_clip: float | None = 12.0
    precision: str = "fp32"  # auto | fp32 | bf16 (see segsynth.utils.precision)
    prefetch: int = 2  # batches drawn ahead on a background thread; 0 draws on the training thread

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.prefetch < 0:
            raise ConfigError(f"prefetch must be >= 0, got {self.prefetch}")

    def autocast_dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The autocast dtype on ``device``: bf16 or None (fp32)."""
        if self.amp and self.precision == "fp32":  # an old config's amp=True: bf16 on CUDA only
            return torch.bfloat16 if torch.device(device).type == "cuda" else None
        return resolve_precision(self.precision, device)

    def fingerprint(self) -> str:
        d = asdict(self)
        for k in ("progress", "prefetch"):  # neither changes what is trained
            d.pop(k)
        if d["precision"] == "fp32":  # checkpoints written before the field existed still resume
            d.pop("precision")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StepState:
    step: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    loss: float
    device: torch.device
    lr: float


class TrainHook(Protocol):
    def after_step(self, state: StepState) -> dict[str, float] | None: ...

    # optional: def extra_loss(self, net, step, device) -> torch.Tensor | None (added to the loss before backward)


@dataclass
class TrainResult:
    model: torch.nn.Module
    best_val_dice: float
    best_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    steps: int = 0
    precision: str = "fp32"
    data_wait_s: float = 0.0  # time the training thread waited for batches (this session)
    data_wait_fraction: float = 0.0  # data_wait_s / time in training steps (validation not counted)
    source_statistics: dict[str, Any] = field(default_factory=dict)  # sources.source_statistics (this session)
    earlier_seconds: float = 0.0  # what an earlier, interrupted process of this run spent (resumed; nnunet)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed_from_env(device: torch.device) -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1). Returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def validation_dice(model: torch.nn.Module, cases: Sequence[Case], num_classes: int,
                    patch_size: Sequence[int] | None, device: torch.device,
                    dtype: torch.dtype | None = None) -> float:
    """Mean over cases of the mean foreground Dice (predictions under ``dtype`` autocast, Dice in fp32)."""
    scores = []
    with autocast(device, dtype):
        preds = predict_many(model, [c.image for c in cases], patch_size=patch_size, device=device,
                             names=case_names(cases))
    for c, pred in zip(cases, preds):
        d = soft_dice_per_class(torch.from_numpy(pred), torch.as_tensor(c.mask), num_classes)
        scores.append(float(d.mean()))
    return float(np.mean(scores)) if scores else float("nan")


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_segmenter(model: torch.nn.Module, source: PairSource, val_cases: Sequence[Case], cfg: TrainConfig | None,
                    *, num_classes: int, device: torch.device | str = "cpu",
                    checkpoint_dir: str | Path | None = None, hooks: Sequence[Any] = (),
                    checkpoint_every: int | None = None) -> TrainResult:
    """Train ``model`` on batches from ``source``; return it with the best validation weights loaded."""
    cfg = cfg or TrainConfig()
    # validation images too small for the network: refused now, naming the file, not after val_every steps
    check_images_fit(model, [c.spatial_shape for c in val_cases], cfg.patch_size, case_names(val_cases),
                     options_hint=True)
    device = resolve_device(device)
    distributed = init_distributed_from_env(device)
    rank = _rank()
    model = model.to(device)
    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    gen = torch_generator(derive_seed(cfg.seed, "train-batches", rank))
    amp_dtype = cfg.autocast_dtype(device)
    if rank == 0:
        log.info("training precision: %s on %s (--precision %s%s)", describe_precision(amp_dtype), device,
                 cfg.precision, ", amp" if cfg.amp else "")
    reset_peak_memory(device)

    start_step, best, best_step, best_state, history = 0, -1.0, 0, None, []
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)  # a file that is not a weights-only checkpoint: DataError naming it
        if isinstance(ck, dict) and ck.get("fingerprint") == cfg.fingerprint():
            load_module_state(model, ck["model"], ckpt_path, "checkpoint weights")  # e.g. other channels: 1 line
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"][rank] if rank < len(ck["generator"]) else ck["generator"][0])
            start_step, best, best_step = ck["step"], ck["best"], ck["best_step"]
            best_state, history = ck["best_state"], json.loads(ck["history"])
            for i, h in enumerate(hooks):
                if hasattr(h, "load_state_dict") and f"hook{i}" in ck:
                    h.load_state_dict(ck[f"hook{i}"])
            if rank == 0:
                log.info("resumed from %s at step %d", ckpt_path, start_step)
        elif rank == 0:
            log.warning("ignoring checkpoint %s: it was written with a different configuration", ckpt_path)

    every = checkpoint_every or cfg.val_every
    t0 = time.perf_counter()
    bar = progress_bar(cfg.steps, "train", cfg.progress and rank == 0, initial=start_step)
    net.train()
    batches = Prefetcher(source, cfg.batch_size, gen, cfg.steps - start_step, depth=cfg.prefetch,
                         pin_memory=device.type == "cuda", start=start_step)
    step_s, t_mark = 0.0, time.perf_counter()  # step time: from asking for a batch to the end of the hooks
    try:
        for step, (x, y) in zip(range(start_step, cfg.steps), batches):
            if step == start_step:
                check_input_size(model, x.shape[2:])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = net(x)
                if isinstance(logits, (list, tuple)):
                    logits = logits[0]
                with full_precision(device):  # the loss in fp32
                    loss = dice_ce_loss(logits.float(), y)
                total = loss
                for h in hooks:  # e.g. semi-supervised terms on unlabelled images
                    term = h.extra_loss(net, step, device) if hasattr(h, "extra_loss") else None
                    if term is not None:
                        total = total + term
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            rec: dict[str, float] = {"step": step + 1, "loss": float(loss.detach())}
            state = StepState(step + 1, model, opt, x, y, rec["loss"], device, opt.param_groups[0]["lr"])
            for h in hooks:
                extra = h.after_step(state)
                if extra:
                    rec.update(extra)
            bar.update(1)
            step_s += time.perf_counter() - t_mark
            last = step + 1 == cfg.steps
            if (step + 1) % cfg.val_every == 0 or last:
                if rank == 0:
                    if val_cases:
                        vd = validation_dice(model, val_cases, num_classes, cfg.patch_size, device, amp_dtype)
                    else:
                        vd = float("nan")
                    rec["val_dice"] = vd
                    rec["data_wait_fraction"] = batches.wait_s / step_s if step_s > 0 else 0.0
                    if not val_cases or vd > best:
                        best, best_step = (vd if val_cases else -1.0), step + 1
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", val=f"{vd:.3f}", best=f"{best:.3f}")
                net.train()
            history.append(rec)
            if ckpt_path is not None and ((step + 1) % every == 0 or last) and rank == 0:
                _save_checkpoint(ckpt_path, model, opt, sched, batches.state, step + 1, best, best_step, best_state,
                                 history, cfg, hooks)
            if distributed and ckpt_path is not None and ((step + 1) % every == 0 or last):
                dist.barrier()
            t_mark = time.perf_counter()
    finally:
        batches.close()
    bar.close()

    if best_state is None:  # resumed a finished run, or zero steps
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    if distributed:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
    model.eval()
    stats = source_statistics(source)
    for name, st in stats.items():
        log.info("training source %s: %s", name, ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in st.items()))
    return TrainResult(model=model, best_val_dice=float(best), best_step=best_step, history=history,
                       seconds=time.perf_counter() - t0, peak_memory_mb=peak_memory_mb(device),
                       steps=cfg.steps, precision=describe_precision(amp_dtype), data_wait_s=batches.wait_s,
                       data_wait_fraction=batches.wait_s / step_s if step_s > 0 else 0.0, source_statistics=stats)


def _save_checkpoint(path: Path, model, opt, sched, gen_state, step, best, best_step, best_state, history, cfg, hooks):
    ck = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": [gen_state],  # the batch generator's state after the last batch trained on
        "step": step,
        "best": best,
        "best_step": best_step,
        "best_state": best_state if best_state is not None else copy.deepcopy(model.state_dict()),
        "history": json.dumps(history),
        "fingerprint": cfg.fingerprint(),
    }
    for i, h in enumerate(hooks):
        if hasattr(h, "state_dict"):
            ck[f"hook{i}"] = h.state_dict()
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)
