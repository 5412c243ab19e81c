"""nnU-Net v2 as a sweep method (``nnunet``), and as a consumer of a generator's pairs (``nnunet+GENERATOR``).

The run hands nnU-Net what every other method of the cell gets, and nnU-Net does the rest its own way:

1. The split's N labelled cases and its validation cases are written as an nnU-Net raw dataset
   (``segsynth.export.nnunet``), with ``splits_final.json`` holding one fold: the N cases (plus, for
   ``nnunet+GENERATOR``, the generator's synthetic pairs) to train on, the split's own validation cases to
   validate on. The test cases never reach nnU-Net's folders.
2. ``nnUNetv2_plan_and_preprocess`` (fingerprint, ExperimentPlanner, preprocessing, with
   ``--verify_dataset_integrity``) and nnU-Net's training (``train_entry``: what ``nnUNetv2_train`` does) run
   as subprocesses: nnU-Net's own trainer (augmentation, Dice + CE loss with deep supervision, poly
   schedule), with only its length set, by ``nnUNetTrainerSegsynthBudget`` (``segsynth/generators/
   nnunet_trainer``; ``nnUNet_extTrainer`` points there too, so nnU-Net's own tools find the class by
   name in the run's folders, e.g. ``nnUNetv2_predict -tr nnUNetTrainerSegsynthBudget``). Subprocesses because nnU-Net is configured by environment variables
   (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``, its process counts) and runs worker
   processes of its own: a subprocess gets its own environment, so nothing is set in the sweep's process
   (or a Ray worker's) and nothing leaks from one run into the next, and its worker processes end with it.
3. nnU-Net's predictor (``nnUNetPredictor``: its preprocessing, sliding window with Gaussian weighting, mirroring)
   segments the test cases in the sweep's process, from the trained folder (no environment variable is
   read there), and segsynth's metrics score them, so records pair with every other method's on the same
   cases.

Everything lives in the run's folder (``runs/<run>/nnunet/{raw,preprocessed,results}``). A killed run restarts
cleanly: the raw dataset is written atomically, preprocessing that did not finish is done again, and training
continues from nnU-Net's latest checkpoint (written after every epoch).

Options (``--method-opt nnunet.KEY=VALUE``):
    budget: "images" (default): as many training images as the sweep's other runs see, ``--steps`` x
        ``--batch-size``, in nnU-Net's batches (its planner picks the batch size), split into epochs of
        ``iterations_per_epoch``; "seconds": a wall-clock budget for training, ``seconds`` (default: the
        ``train_seconds`` of this sweep's ``augment`` run of the same N and seed, which must have run before:
        put ``augment`` first in ``--methods``); "epochs": ``epochs`` x ``iterations_per_epoch`` as given
        (nnU-Net's own 1000 x 250 where not given). Records carry ``nnunet_budget``: which budget ran, with
        epochs, iterations, batch size and images seen.
    epochs, iterations_per_epoch, val_iterations_per_epoch: override what the budget derives (defaults:
        iterations per epoch min(250, the budget's iterations); validation iterations a fifth of them, nnU-Net's
        own 50:250).
    seconds: the wall-clock budget (budget "seconds").
    configuration: nnU-Net configuration (default "2d" for 2D data, "3d_fullres" for 3D).
    workers: nnU-Net's data-augmentation processes (``nnUNet_n_proc_DA``; default 0 on the CPU: augmentation in
        the training process, which on a few cores competes with the network for the same cores anyway;
        nnU-Net's own default on a GPU).
    planner: nnU-Net's experiment planner (default "ExperimentPlanner", the plans ``nnUNetPlans``).
    batch_size: "plan" (default for ``nnunet``): the batch nnU-Net's planner picks for the training set as
        written; "real" (default for ``nnunet+GENERATOR``): the batch it picks for the real cases alone (its rule
        caps a batch at 5 % of the dataset's voxels, so synthetic pairs would raise the batch, and at a matched
        images budget halve the iterations: "real" keeps the batch, so that only the training set differs from
        ``nnunet``'s); or a number.
``nnunet+GENERATOR`` also takes ``n_synthetic`` (synthetic pairs written into the training fold; default: as
many as the real training cases, half of what nnU-Net samples), and passes every other option to the generator
method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext, refuse_unknown_options
from segsynth.segment.train import TrainConfig, TrainResult
from segsynth.utils.files import read_jsonl, write_json

log = logging.getLogger(__name__)

INSTALL_HINT = ('method {name!r} needs nnU-Net v2, the "nnunet" extra: pip install "segsynth[nnunet]" '
                '(with torch installed first, or with -c constraints.txt, so that torch keeps its version)')
DATASET_ID = 501
DATASET_NAME = "segsynth"
TRAINER = "nnUNetTrainerSegsynthBudget"
TRAINER_DIR = Path(__file__).with_name("nnunet_trainer")
PLANS = "nnUNetPlans"
FOLD = 0
#: nnU-Net's own schedule: epochs x iterations per epoch, validation iterations per epoch
NNUNET_EPOCHS, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS = 1000, 250, 50
BUDGETS = ("images", "seconds", "epochs")


def nnunet_available() -> bool:
    """Whether nnunetv2 can be imported (the ``nnunet`` extra is installed)."""
    return importlib.util.find_spec("nnunetv2") is not None


def require_nnunet(name: str = "nnunet") -> None:
    """A one-line ConfigError saying how to install nnU-Net when it is not installed."""
    if not nnunet_available():
        raise ConfigError(INSTALL_HINT.format(name=name))


# ------------------------------------------------------------------------------------------------ files


def nnunet_spacing(case: Case) -> list[float] | None:
    """The spacing written with a case's files (for training and for prediction alike): the physical spacing
    of the working array when segsynth knows it, else None (NIfTI's unit spacing: a pixel, as for PNGs)."""
    from segsynth.evaluate.metrics import case_spacing

    sp = case_spacing(case) if case.mask is not None else None
    if sp is None and case.mask is None:  # an image without a mask: derive it from a dummy of the image's shape
        sp = case_spacing(Case(case.case_id, case.image, np.zeros(case.image.shape[1:], np.uint8), case.meta))
    return [float(s) for s in sp] if sp is not None else None


def _as_written(case: Case, case_id: str) -> Case:
    """The case as the raw dataset holds it: a file-safe id, and only the working array's geometry (the source
    file's affine describes the array before segsynth's preprocessing, not this one)."""
    sp = nnunet_spacing(case)
    return Case(case_id, case.image, case.mask, {"spacing": sp} if sp is not None else {})


def write_raw_dataset(raw_root: Path, info: DatasetInfo, train: list[Case], val: list[Case],
                      synthetic: list[Case]) -> tuple[Path, dict[str, list[str]]]:
    """The run's nnU-Net raw dataset (all cases in imagesTr/labelsTr) and its one fold: ``{"train": ids,
    "val": ids}``, the ids as written (``tr_``, ``syn_``, ``val_`` + a number)."""
    from segsynth.export.nnunet import export_nnunet, nnunet_folder_name

    groups = [("tr", train), ("syn", synthetic), ("val", val)]
    ids = {prefix: [f"{prefix}_{i:04d}" for i in range(len(cases))] for prefix, cases in groups}
    target = raw_root / nnunet_folder_name(DATASET_ID, DATASET_NAME)
    if not (target / "dataset.json").exists():  # written atomically: present means complete
        cases = [_as_written(c, cid) for prefix, group in groups for c, cid in zip(group, ids[prefix])]
        export_nnunet(cases, raw_root, dataset_id=DATASET_ID, name=DATASET_NAME, info=info, overwrite=True)
    return target, {"train": ids["tr"] + ids["syn"], "val": ids["val"]}


# ------------------------------------------------------------------------------------------------ running nnU-Net


@dataclasses.dataclass
class NnUNetRun:
    """The run's nnU-Net folders and the environment of its subprocesses."""

    root: Path
    device: torch.device
    workers: int | None = None
    #: peak resident memory of the largest subprocess so far (planning, training), MB; 0 where unknown. Kept in
    #: ``costs.json``, so that a run resumed by another process still reports the earlier process's subprocesses
    peak_rss_mb: float = 0.0

    def __post_init__(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, float(self.costs().get("peak_rss_mb", 0.0)))

    @property
    def costs_path(self) -> Path:
        return self.root / "costs.json"

    @property
    def planned_marker(self) -> Path:
        """Written once nnU-Net's planning and preprocessing of the run's dataset finished."""
        return self.root / "preprocessed.done"

    def costs(self) -> dict[str, float]:
        """What earlier processes of this run measured (``peak_rss_mb``, ``plan_seconds``); {} at first."""
        return json.loads(self.costs_path.read_text()) if self.costs_path.exists() else {}

    def remember(self, **costs: float) -> None:
        write_json(self.costs_path, {**self.costs(), **costs})

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def dataset(self) -> str:
        from segsynth.export.nnunet import nnunet_folder_name

        return nnunet_folder_name(DATASET_ID, DATASET_NAME)

    def model_folder(self, configuration: str) -> Path:
        return self.results / self.dataset / f"{TRAINER}__{PLANS}__{configuration}"

    def env(self, budget: dict[str, Any] | None = None) -> dict[str, str]:
        """The subprocesses' environment: this process's, plus nnU-Net's folders, the trainer folder, process
        counts that fit the run's threads, and the budget."""
        threads = max(1, torch.get_num_threads())
        env = {**os.environ, "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
               "nnUNet_results": str(self.results), "nnUNet_extTrainer": str(TRAINER_DIR),
               "nnUNet_def_n_proc": str(threads), "PYTHONUNBUFFERED": "1"}
        workers = self.workers if self.workers is not None else (0 if self.device.type == "cpu" else None)
        if budget is None:  # planning: nnU-Net's planner sets torch's threads to this count (0 is an error)
            workers = threads
        if workers is not None:
            env["nnUNet_n_proc_DA"] = str(int(workers))
        if self.device.type == "cuda" and self.device.index is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.device.index)  # nnUNetv2_train -device cuda takes cuda:0
        if budget is not None:
            env["SEGSYNTH_NNUNET_BUDGET"] = json.dumps({**budget, "threads": threads})
        return env

    def call(self, entry: str, args: list[str], log_name: str, budget: dict[str, Any] | None = None) -> None:
        """Run one of nnU-Net's entry points (``module:function``) as a subprocess; its output goes to
        ``logs/<log_name>.log``; a failure raises with the log's last lines."""
        module, fn = entry.split(":")
        code = (f"import sys; sys.argv[0] = {fn!r}; from {module} import {fn}; "
                f"sys.exit({fn}())")
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{log_name}.log"
        t0 = time.perf_counter()
        with open(path, "a") as out:
            out.write(f"\n$ {entry} {' '.join(args)}\n")
            out.flush()
            proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env(budget), cwd=self.root)
            try:
                self.peak_rss_mb = max(self.peak_rss_mb, _wait_with_peak_rss(proc))
            except BaseException:  # interrupted: nnU-Net's process must not outlive the run
                proc.kill()
                proc.wait()
                raise
        self.remember(peak_rss_mb=self.peak_rss_mb)
        if proc.returncode != 0:
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"nnU-Net {entry.split(':')[1]} failed (exit {proc.returncode}); {path}:\n{tail}")
        log.info("nnU-Net %s: %.1f s", fn, time.perf_counter() - t0)


def _wait_with_peak_rss(proc: subprocess.Popen) -> float:
    """Wait for ``proc``; returns its peak resident memory in MB (with its waited-for children's; 0 where the
    platform does not report it). ``os.wait4`` gives the usage of that one process, which the sweep's own
    peak-memory reading (this process's) cannot see."""
    if not hasattr(os, "wait4"):
        proc.wait()
        return 0.0
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024.0)  # bytes on macOS, kB on Linux


def plan_and_preprocess(run: NnUNetRun, configuration: str, planner: str, fold: dict[str, list[str]]) -> dict:
    """nnU-Net's fingerprint, plans and preprocessing of the run's dataset (again when an earlier attempt did
    not finish), and the run's own split as ``splits_final.json``; returns the plans."""
    done = run.planned_marker
    target = run.preprocessed / run.dataset
    if not done.exists():
        t0 = time.perf_counter()
        shutil.rmtree(target, ignore_errors=True)
        args = ["-d", str(DATASET_ID), "-c", configuration, "--verify_dataset_integrity", "-npfp", "1",
                "-np", "1", "-pl", planner]
        run.call("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry", args,
                 "plan_and_preprocess")
        write_json(target / "splits_final.json", [fold])
        run.remember(plan_seconds=time.perf_counter() - t0)  # a resumed run's record counts it (it skips this)
        done.write_text("ok\n")
    plans = json.loads((target / f"{PLANS}.json").read_text())
    if configuration not in plans.get("configurations", {}):
        raise ConfigError(f"nnU-Net planned no {configuration!r} configuration for this dataset "
                          f"(planned: {', '.join(plans.get('configurations', {}))})")
    return plans


_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def logged_epoch_seconds(fold_dir: Path) -> float:
    """The seconds of the epochs nnU-Net's training logs in ``fold_dir`` record (its own "Epoch time" lines,
    over every ``training_log_*.txt``); 0 where it has logged none. Read before training, it is what an earlier,
    interrupted process of the run spent, which a resumed run's cost must include."""
    return sum(float(m.group(1)) for p in sorted(Path(fold_dir).glob("training_log_*.txt"))
               for m in _EPOCH_TIME.finditer(p.read_text(errors="replace")))


def train(run: NnUNetRun, configuration: str, budget: dict[str, Any]) -> Path:
    """nnU-Net's training of fold 0 with the budget trainer (``train_entry`` in a subprocess): from scratch,
    or continued from the latest checkpoint of a killed run, or only its final validation when training
    finished; returns the fold folder."""
    fold_dir = run.model_folder(configuration) / f"fold_{FOLD}"
    if (fold_dir / "validation" / "summary.json").exists() and (fold_dir / "checkpoint_final.pth").exists():
        return fold_dir
    mode = ("validate" if (fold_dir / "checkpoint_final.pth").exists()
            else "continue" if (fold_dir / "checkpoint_latest.pth").exists() else "start")
    device = "cuda" if run.device.type == "cuda" else run.device.type
    run.call("segsynth.generators.nnunet:train_entry", [run.dataset, configuration, str(FOLD), device, mode],
             "train", budget=budget)
    return fold_dir


def train_entry(argv: list[str] | None = None) -> int:
    """``nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerSegsynthBudget -device DEVICE [--c | --val]``
    as nnU-Net's ``run_training`` does it on one device, with the trainer class given rather than looked up.

    nnU-Net looks a trainer up by importing every module of its trainer package until one defines the class;
    with a torchvision that does not match torch (the CUDA build of torchvision beside a CPU-only torch, as on
    machines that install torch's CPU wheel) that import fails in the Primus trainers' timm import before the
    search reaches ``nnUNet_extTrainer``. The class is segsynth's, so it is used directly. Runs in the
    subprocess that ``NnUNetRun.call`` starts, with nnU-Net's environment variables set there."""
    import torch.backends.cudnn as cudnn
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from segsynth.generators.nnunet_trainer.nnUNetTrainerSegsynthBudget import nnUNetTrainerSegsynthBudget

    dataset, configuration, fold, device, mode = argv if argv is not None else sys.argv[1:]
    base = Path(os.fspath(nnUNet_preprocessed)) / dataset
    plans = json.loads((base / f"{PLANS}.json").read_text())
    plans["continue_training"] = mode == "continue"
    dataset_json = json.loads((base / "dataset.json").read_text())
    trainer = nnUNetTrainerSegsynthBudget(plans=plans, configuration=configuration, fold=int(fold),
                                          dataset_json=dataset_json, device=torch.device(device))
    maybe_load_checkpoint(trainer, mode == "continue", mode == "validate", None)
    if torch.cuda.is_available():
        cudnn.deterministic = False
        cudnn.benchmark = True
    if mode != "validate":
        trainer.run_training()
    trainer.perform_actual_validation(False)
    return 0


# ------------------------------------------------------------------------------------------------ budget


def schedule(options: dict[str, Any], cfg: TrainConfig, nnunet_batch: int, seconds: float | None) -> dict[str, Any]:
    """Epochs, iterations per epoch and validation iterations of the run for its budget option."""
    budget = options["budget"]
    epochs, ipe, vipe = options["epochs"], options["iterations_per_epoch"], options["val_iterations_per_epoch"]
    out: dict[str, Any] = {"budget": budget, "batch_size": int(nnunet_batch)}
    if budget == "epochs":
        epochs = int(epochs or NNUNET_EPOCHS)
        ipe = int(ipe or NNUNET_ITERATIONS)
    else:
        images = int(cfg.steps) * int(cfg.batch_size)  # what the sweep's other runs of the cell see
        iterations = max(1, math.ceil(images / nnunet_batch))
        ipe = int(ipe or min(NNUNET_ITERATIONS, iterations))
        out["matched_images"] = images
        if budget == "images":
            epochs = int(epochs or max(1, math.ceil(iterations / ipe)))
        else:  # seconds: the trainer fixes the epochs from its first one; this is only a ceiling
            epochs = int(epochs or NNUNET_EPOCHS)
            out["seconds"] = float(seconds)
    vipe = int(vipe if vipe is not None else max(1, round(ipe * NNUNET_VAL_ITERATIONS / NNUNET_ITERATIONS)))
    out.update(epochs=epochs, iterations_per_epoch=ipe, val_iterations_per_epoch=vipe)
    return out


def matched_seconds(ctx: MethodContext) -> float:
    """The ``train_seconds`` of this sweep's finished ``augment`` run of the same N and seed (its results.jsonl
    is two folders above the run's)."""
    if ctx.workdir is None:
        raise ConfigError("nnunet budget=seconds without a run folder needs seconds=S")
    results = Path(ctx.workdir).parent.parent / "results.jsonl"
    n_units = len({str(c.meta.get("volume_id", c.case_id)) for c in ctx.train})
    for r in read_jsonl(results):
        if (r.get("method") == "augment" and r.get("status") == "ok" and r.get("seed") == ctx.seed
                and r.get("n_train") == n_units and r.get("train_seconds") is not None):
            return float(r["train_seconds"])
    raise ConfigError(f"nnunet budget=seconds: no finished augment run of N={n_units}, seed={ctx.seed} in "
                      f"{results} to match; put augment before nnunet in --methods, or give seconds=S")


# ------------------------------------------------------------------------------------------------ prediction


class NnUNetModel:
    """nnU-Net's trained network (fold 0, ``checkpoint_final.pth``) behind its own predictor."""

    def __init__(self, model_folder: Path, device: torch.device, workdir: Path):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.model_folder, self.workdir = Path(model_folder), Path(workdir)
        dataset_json = json.loads((self.model_folder / "dataset.json").read_text())
        plans = PlansManager(json.loads((self.model_folder / "plans.json").read_text()))
        ckpt = torch.load(self.model_folder / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu",
                          weights_only=False)
        config = plans.get_configuration(ckpt["init_args"]["configuration"])
        # the budget trainer builds nnUNetTrainer's network, so its class is not needed here (nor the
        # nnUNet_extTrainer variable that nnU-Net would look it up with)
        network = nnUNetTrainer.build_network_architecture(
            plans, config, determine_num_input_channels(plans, config, dataset_json),
            plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        network.load_state_dict(ckpt["network_weights"])
        self.network = network
        self.file_ending = dataset_json["file_ending"]
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                         perform_everything_on_device=device.type == "cuda", device=device,
                                         verbose=False, allow_tqdm=False)
        self.predictor.manual_initialization(network, plans, config, [ckpt["network_weights"]], dataset_json,
                                             ckpt["trainer_name"], ckpt.get("inference_allowed_mirroring_axes"))

    def predict_cases(self, cases: list[Case]) -> list[np.ndarray]:
        """Label maps (*S) int64 of the cases' images, through files as nnU-Net reads and writes them (so
        the geometry nnU-Net sees is the one it trained with)."""
        from segsynth.data.io import read_mask, write_image

        folder = self.workdir / "predict"
        shutil.rmtree(folder, ignore_errors=True)
        inputs, outputs = [], []
        for i, c in enumerate(cases):
            sp = nnunet_spacing(c)
            files = []
            for ch in range(c.image.shape[0]):
                path = folder / "in" / f"case_{i:05d}_{ch:04d}{self.file_ending}"
                write_image(path, c.image[ch:ch + 1], {"spacing": sp} if sp is not None else {})
                files.append(str(path))
            inputs.append(files)
            outputs.append(str(folder / "out" / f"case_{i:05d}"))
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "logs" / "predict.log", "a") as log_file, contextlib.redirect_stdout(log_file):
            self.predictor.predict_from_files_sequential(inputs, outputs, save_probabilities=False, overwrite=True)
        preds = []
        for c, out in zip(cases, outputs):
            mask, _ = read_mask(out + self.file_ending)
            mask = np.asarray(mask).astype(np.int64)
            if mask.shape != tuple(c.image.shape[1:]):
                raise DataError(f"nnU-Net's prediction has shape {mask.shape}, the image {c.image.shape[1:]}",
                                out + self.file_ending)
            preds.append(mask)
        shutil.rmtree(folder, ignore_errors=True)
        return preds


@dataclasses.dataclass
class NnUNetResult(TrainResult):
    """A ``TrainResult`` whose test cases are segmented by nnU-Net's predictor (``predict_cases``, which the
    sweep uses instead of its own inference) and whose records carry ``record_fields``."""

    predictor: Any = None
    record_fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    def predict_cases(self, cases: list[Case]) -> list[np.ndarray]:
        return self.predictor.predict_cases(cases)


# ------------------------------------------------------------------------------------------------ methods

OPTIONS: dict[str, Any] = {"budget": "images", "epochs": None, "iterations_per_epoch": None,
                           "val_iterations_per_epoch": None, "seconds": None, "configuration": None,
                           "workers": None, "planner": "ExperimentPlanner", "batch_size": "plan"}


def real_cases_batch(plans: dict[str, Any], configuration: str, n_real: int, n_all: int) -> int:
    """The batch nnU-Net's ExperimentPlanner would give ``configuration`` for ``n_real`` of the dataset's ``n_all``
    cases: its planned batch, capped again by its rule that a batch covers at most 5 % of the dataset's voxels
    (and at least 2). Equal to the planned batch when nothing is synthetic."""
    conf = plans["configurations"][configuration]
    planned = int(conf["batch_size"])
    if n_real >= n_all:
        return planned
    median = plans["configurations"].get("3d_fullres", {}).get("median_image_size_in_voxels") \
        or plans["original_median_shape_after_transp"]
    cap = round(float(np.prod(median, dtype=np.float64)) * n_real * 0.05 / float(np.prod(conf["patch_size"])))
    return max(min(planned, cap), 2)


class NnUNetMethod(Method):
    """nnU-Net v2 on the split's labelled cases: its own plans, preprocessing, trainer and predictor; the sweep
    sets only the training budget, and scores the predictions with segsynth's metrics."""

    name: ClassVar[str] = "nnunet"
    description: ClassVar[str] = ("nnU-Net v2 (its own plans, preprocessing, augmentation, loss, schedule and "
                                  "predictor) on the same labelled cases; needs the nnunet extra")
    defaults: ClassVar[dict[str, Any] | None] = OPTIONS

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._check(self.option_values())

    def _check(self, o: dict[str, Any]) -> None:
        if o["budget"] not in BUDGETS:
            raise ConfigError(f"{self.name}.budget must be one of {', '.join(BUDGETS)}, not {o['budget']!r}")
        for key in ("epochs", "iterations_per_epoch", "seconds"):
            if o[key] is not None and not float(o[key]) > 0:
                raise ConfigError(f"{self.name}.{key} must be > 0, got {o[key]!r}")
        for key in ("val_iterations_per_epoch", "workers"):
            if o[key] is not None and int(o[key]) < 0:
                raise ConfigError(f"{self.name}.{key} must be >= 0, got {o[key]!r}")
        b = o["batch_size"]
        if b not in ("plan", "real") and not (str(b).isdigit() and int(b) >= 1):
            raise ConfigError(f"{self.name}.batch_size must be plan, real or a number >= 1, not {b!r}")
        if o["configuration"] not in (None, "2d", "3d_fullres", "3d_lowres"):
            raise ConfigError(f"{self.name}.configuration must be 2d, 3d_fullres or 3d_lowres")

    def option_docs(self) -> list[str]:
        import inspect

        return [inspect.cleandoc(__doc__ or "")]  # this module's docstring says what the options do

    def require(self) -> None:
        """Raise the one-line install hint when nnunetv2 is missing (the sweep asks before it starts)."""
        require_nnunet(self.name)

    def nnunet_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.option_values().items() if k in OPTIONS}

    def synthetic_cases(self, ctx: MethodContext) -> list[Case]:
        return []

    def run(self, ctx: MethodContext) -> NnUNetResult:
        require_nnunet(self.name)
        t0 = time.perf_counter()
        o = self.nnunet_options()
        cfg = ctx.train_config or TrainConfig(seed=ctx.seed)
        if ctx.workdir is None:
            raise ConfigError(f"{self.name} needs a run folder (MethodContext.workdir) for nnU-Net's files")
        if not ctx.val:
            raise ConfigError(f"{self.name} needs validation cases (--n-val >= 1): they are nnU-Net's validation fold")
        configuration = o["configuration"] or ("2d" if ctx.info.spatial_dims == 2 else "3d_fullres")
        root = Path(ctx.workdir) / "nnunet"
        run = NnUNetRun(root, torch.device(ctx.device), None if o["workers"] is None else int(o["workers"]))
        saved = root / "budget.json"
        synthetic = self.synthetic_cases(ctx)
        t_generator = time.perf_counter() - t0  # nnunet+GENERATOR: the generator's fit and sampling (else ~0)
        labelled = [c for c in ctx.train if c.mask is not None]
        _, fold = write_raw_dataset(run.raw, ctx.info, labelled, ctx.val, synthetic)
        # planned by an earlier, interrupted process: the record's seconds include what that planning took
        earlier_plan = float(run.costs().get("plan_seconds", 0.0)) if run.planned_marker.exists() else 0.0
        plans = plan_and_preprocess(run, configuration, str(o["planner"]), fold)
        t_before_training = time.perf_counter() - t0
        if saved.exists():  # a resumed run keeps its budget (a wall-clock one above all)
            budget = json.loads(saved.read_text())
        else:
            seconds = None
            if o["budget"] == "seconds":
                seconds = float(o["seconds"]) if o["seconds"] is not None else matched_seconds(ctx)
                # the wall clock counts what came before training: the generator's pairs and nnU-Net's planning
                seconds = max(1.0, seconds - t_before_training)
            planned = int(plans["configurations"][configuration]["batch_size"])
            n_real = len(labelled) + len(ctx.val)
            batch = (planned if o["batch_size"] == "plan" else
                     real_cases_batch(plans, configuration, n_real, n_real + len(synthetic))
                     if o["batch_size"] == "real" else int(o["batch_size"]))
            budget = schedule(o, cfg, batch, seconds)
            budget.update(configuration=configuration, planned_batch_size=planned, batch_option=o["batch_size"])
            write_json(saved, budget)
        earlier = logged_epoch_seconds(run.model_folder(configuration) / f"fold_{FOLD}")  # 0 unless resumed
        fold_dir = train(run, configuration, {k: budget[k] for k in ("epochs", "iterations_per_epoch",
                                                                     "val_iterations_per_epoch", "seconds",
                                                                     "batch_size") if k in budget})
        trained = fold_dir / "segsynth_budget.json"
        epochs = json.loads(trained.read_text())["epochs"] if trained.exists() else budget["epochs"]
        iterations = int(epochs) * int(budget["iterations_per_epoch"])
        summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
        val_dice = float(summary["foreground_mean"]["Dice"])
        model = NnUNetModel(fold_dir.parent, torch.device(ctx.device), root)
        fields = {**budget, "epochs_run": int(epochs), "iterations": iterations,
                  "images_seen": iterations * int(budget["batch_size"]), "n_synthetic": len(synthetic),
                  "generator_seconds": t_generator, "plan_seconds": t_before_training - t_generator,
                  "subprocess_peak_memory_mb": run.peak_rss_mb,
                  # epochs an earlier, interrupted process trained (nnU-Net's log) and its planning; the record's
                  # seconds include them
                  "earlier_training_seconds": earlier, "earlier_plan_seconds": earlier_plan}
        log.info("%s: %s budget, %d epochs x %d iterations of batch %d (%d images); validation Dice %.3f",
                 self.name, budget["budget"], epochs, budget["iterations_per_epoch"], budget["batch_size"],
                 fields["images_seen"], val_dice)
        # on the CPU the run's peak memory is nnU-Net's process's, which the sweep's reading of its own misses
        peak = run.peak_rss_mb if run.device.type == "cpu" else 0.0
        return NnUNetResult(model=model.network, best_val_dice=val_dice, best_step=iterations,
                            seconds=time.perf_counter() - t0, steps=iterations, predictor=model, peak_memory_mb=peak,
                            earlier_seconds=earlier + earlier_plan, record_fields={"nnunet_budget": fields})


class NnUNetGeneratorMethod(NnUNetMethod):
    """nnU-Net trained on the real cases plus a generator method's synthetic pairs (training fold only; the
    validation fold stays real)."""

    name: ClassVar[str] = "nnunet+generator"
    generator: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any] | None] = None

    def __init__(self, generator: str | None = None, **options: Any):
        from segsynth.generators import get_method

        inner = generator or self.generator
        if not inner or "+" in inner or inner == "nnunet":
            raise ConfigError(f"nnunet+GENERATOR needs a generator method, not {inner!r}")
        self.name = f"nnunet+{inner}"  # type: ignore[misc]  # the registered name, generic ones included
        own = {k: v for k, v in options.items() if k in OPTIONS or k == "n_synthetic"}
        self.inner_name, self.inner_options = inner, {k: v for k, v in options.items() if k not in own}
        self.inner = get_method(inner, **self.inner_options)
        if not self.inner.makes_synthetic_pairs():
            raise ConfigError(f"{self.name}: method {inner!r} makes no synthetic pairs")
        refuse_unknown_options(self.name, own, [*OPTIONS, "n_synthetic"])
        if own.get("n_synthetic") is not None and int(own["n_synthetic"]) < 1:
            raise ConfigError(f"{self.name}.n_synthetic must be >= 1, got {own['n_synthetic']!r}")
        self.options = options
        self.own = own
        self._check(self.nnunet_options())
        self._synthetic: list[Case] | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"nnU-Net v2 trained on the real cases + {self.inner_name}'s synthetic pairs; needs the nnunet extra"

    def nnunet_options(self) -> dict[str, Any]:
        return {**OPTIONS, "batch_size": "real", **{k: v for k, v in self.own.items() if k in OPTIONS}}

    def option_values(self) -> dict[str, Any]:
        return {**self.inner.option_values(), **self.nnunet_options(), "n_synthetic": self.own.get("n_synthetic")}

    def option_docs(self) -> list[str]:
        return [*super().option_docs(), *self.inner.option_docs()]

    def makes_synthetic_pairs(self) -> bool:
        return True

    def synthetic_cases(self, ctx: MethodContext) -> list[Case]:
        """``n_synthetic`` pairs of the generator method, whole images: from its generator as fitted for this
        run (spade, brainspade: fitted or reloaded without training a segmenter), or, for methods whose
        generator comes out of their run (GenSeg's), after that run (in ``<run>/generator_method``; a
        generator pre-trained by the sweep's own run of that method is reused through the shared folder)."""
        if self._synthetic is not None:
            return self._synthetic
        from segsynth.utils.seed import derive_seed, torch_generator

        inner_ctx = dataclasses.replace(ctx, workdir=Path(ctx.workdir) / "generator_method" if ctx.workdir else None,
                                        options=dict(self.inner_options))
        whole = inner_ctx
        if ctx.train_config is not None:
            whole = dataclasses.replace(inner_ctx, train_config=dataclasses.replace(ctx.train_config, patch_size=None))
        source = self.inner.synthetic_source(whole)
        if source is None:
            self.inner.run(inner_ctx)
            source = self.inner.synthetic_source(whole)
        if source is None:
            raise ConfigError(f"{self.name}: method {self.inner_name!r} gave no synthetic pairs")
        n = int(self.own.get("n_synthetic") or len([c for c in ctx.train if c.mask is not None]))
        out: list[Case] = []
        if getattr(source, "transform", None) is None and len(getattr(source, "images", [])) >= n:
            pairs = [(source.images[i], source.masks[i]) for i in range(n)]  # the method's own pairs, in order
        else:
            g = torch_generator(derive_seed(ctx.seed, "nnunet-synthetic", self.inner_name))
            pairs = []
            for _ in range(n):
                x, y = source.draw(1, g)
                pairs.append((x[0], y[0]))
        real = [c for c in ctx.train if c.mask is not None]
        sp = nnunet_spacing(real[0]) if real else None  # generators render on the working grid of the real pairs
        for i, (x, y) in enumerate(pairs):
            out.append(Case(f"syn_{i:04d}", np.asarray(x, dtype=np.float32), np.asarray(y).astype(np.int64),
                            {"synthetic": self.inner_name, **({"array_spacing": sp} if sp is not None else {})}))
        self._synthetic = out
        return out

    def synthetic_source(self, ctx: MethodContext) -> Any:
        """The synthetic pairs nnU-Net trained on (label fidelity scores them)."""
        from segsynth.segment.sources import CaseSource

        if self._synthetic is None:
            self.synthetic_cases(ctx)
        return CaseSource(self._synthetic or [], patch_size=ctx.train_config.patch_size if ctx.train_config else None,
                          num_classes=ctx.info.num_classes)


class NnUNetSeparateAugMethod(NnUNetGeneratorMethod):
    generator: ClassVar[str] = "separate_aug"


class NnUNetGenSegAugMethod(NnUNetGeneratorMethod):
    generator: ClassVar[str] = "genseg_aug"


class NnUNetSpadeMethod(NnUNetGeneratorMethod):
    generator: ClassVar[str] = "spade"


class NnUNetBrainSpadeMethod(NnUNetGeneratorMethod):
    generator: ClassVar[str] = "brainspade"
