"""nnU-Net's own trainer with the budget of a segsynth sweep run.

Everything is ``nnUNetTrainer``'s: network, augmentation, Dice + CE loss with deep supervision, SGD with the
poly learning-rate schedule, validation, checkpoints. Only the length of the run changes. The segsynth
``nnunet`` method passes the budget as JSON in the environment variable ``SEGSYNTH_NNUNET_BUDGET`` of the
subprocess that runs ``nnUNetv2_train``:

* ``epochs``, ``iterations_per_epoch``, ``val_iterations_per_epoch``: the run's schedule (the poly schedule
  reaches zero at ``epochs``);
* ``seconds`` (optional): a wall-clock budget for the training loop. The first epoch is timed and the number
  of epochs is fixed from it (kept in ``segsynth_budget.json`` in the fold's folder, so a resumed run keeps
  it), the learning-rate schedule is stretched to it, and ``epochs`` is then only a ceiling;
* ``threads`` (optional): torch threads on the CPU (``nnUNetv2_train -device cpu`` takes every core);
* ``batch_size`` (optional): the run's batch, over the one in the plans (``nnunet.batch_size``).

nnU-Net finds this class by name through ``nnUNet_extTrainer`` (nnunetv2 >= 2.8.1), so no file is written into
nnU-Net's own package. The latest checkpoint is written after every epoch, so a killed run resumes (``--c``)
where it stopped. Checkpoints are written whole or not at all (to a ``.partial`` file, then renamed), so a kill
while one is written leaves the previous one to resume from, never a truncated file.
"""

import json
import math
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_FILE = "segsynth_budget.json"


class nnUNetTrainerSegsynthBudget(nnUNetTrainer):  # nnU-Net names trainers so; found by class name
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        budget = json.loads(os.environ.get("SEGSYNTH_NNUNET_BUDGET", "{}"))
        if budget.get("batch_size"):  # before nnU-Net reads the plans (and saves them with the fold)
            conf = {**plans["configurations"][configuration], "batch_size": int(budget["batch_size"])}
            plans = {**plans, "configurations": {**plans["configurations"], configuration: conf}}
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(budget.get("epochs", self.num_epochs))
        self.num_iterations_per_epoch = int(budget.get("iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(budget.get("val_iterations_per_epoch",
                                                           self.num_val_iterations_per_epoch))
        self.wall_seconds = budget.get("seconds")
        self.save_every = 1  # checkpoint_latest after every epoch: a killed run loses one epoch at most
        threads = budget.get("threads")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(int(threads))

    def save_checkpoint(self, filename: str) -> None:
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if os.path.isfile(partial):  # nnU-Net writes nothing with checkpointing disabled or off rank 0
            os.replace(partial, filename)

    def _fixed_epochs(self) -> int | None:
        path = os.path.join(self.output_folder, BUDGET_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return int(json.load(f)["epochs"])
        return None

    def _set_epochs(self, epochs: int) -> None:
        self.num_epochs = int(epochs)
        self.lr_scheduler.max_steps = int(epochs)  # the poly schedule ends with the run

    def run_training(self):
        if self.wall_seconds is None:
            return super().run_training()
        self.on_train_start()
        fixed = self._fixed_epochs()
        if fixed is not None:
            self._set_epochs(fixed)
        t0 = time.perf_counter()
        while self.current_epoch < self.num_epochs:
            t_epoch = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()  # its checkpoint and plot count in the epoch's time
            if fixed is None:  # the first epoch of the run: how many fit in the budget
                seconds = time.perf_counter() - t_epoch
                left = float(self.wall_seconds) - (time.perf_counter() - t0)
                fixed = max(1, min(self.num_epochs, 1 + math.floor(max(0.0, left) / max(seconds, 1e-6))))
                self._set_epochs(fixed)
                if self.local_rank == 0:
                    with open(os.path.join(self.output_folder, BUDGET_FILE), "w") as f:
                        json.dump({"epochs": fixed, "first_epoch_seconds": seconds,
                                   "seconds": float(self.wall_seconds)}, f)
                self.print_to_log_file(f"segsynth wall-clock budget {self.wall_seconds} s: {fixed} epochs "
                                       f"(first epoch {seconds:.1f} s)")
        self.on_train_end()
