"""Sweeps and synthesis as Ray tasks on a local Ray instance (127.0.0.1, 2 CPUs), checked against local runs.

One Ray instance serves the whole module; everything skips cleanly when Ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segsynth.errors import ConfigError
from segsynth.experiments.sweep import run_sweep
from segsynth.generators import METHODS
from segsynth.generators.baselines import NoAugmentation
from segsynth.utils.files import read_jsonl
from tests.conftest import write_png_dataset
from tests.experiments.test_sweep import _cfg, cells

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
KW = dict(methods=["none", "augment"], n_values=[1], seeds=[0, 1], sample_predictions=0, report=False)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance for this module; workers import the tests package and use one thread each."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    """A tiny PNG dataset and the records of its 4-run sweep (none, augment x seeds 0, 1) run locally."""
    root = tmp_path_factory.mktemp("raysweep")
    data = write_png_dataset(root / "d", n=10)
    return data, cells(run_sweep(_cfg(data, root / "local", **KW)))


def test_ray_sweep_gives_the_local_records(ray_address, sweep_data, tmp_path):
    data, local = sweep_data
    out = tmp_path / "ray"
    records = run_sweep(_cfg(data, out, executor="ray", **KW))
    assert cells(records) == local
    # one line per run and test set, each whole; a rerun submits nothing and writes nothing
    before = (out / "results.jsonl").read_text()
    assert len(before.splitlines()) == 4
    run_sweep(_cfg(data, out, executor="ray", **KW))
    assert (out / "results.jsonl").read_text() == before


class _KillAt:
    """A training hook that kills its own process (the Ray worker) at one step."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class _DiesOnce(NoAugmentation):
    """`none`, whose worker dies at step 3 of the first attempt (after the step-2 checkpoint)."""

    name = "dies_once"

    def run(self, ctx):
        from segsynth.segment.train import train_segmenter

        ckpt = ctx.workdir / "checkpoint"
        attempts = ctx.workdir / "attempts.txt"
        first = not attempts.exists()
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        with open(attempts, "a") as f:
            f.write(f"pid {os.getpid()} checkpoint {(ckpt / 'last.pt').exists()}\n")
        return train_segmenter(ctx.build_segmenter(), self.training_source(ctx), ctx.val, ctx.train_config,
                               num_classes=ctx.info.num_classes, device=ctx.device, checkpoint_dir=ckpt,
                               hooks=[_KillAt(3)] if first else [])


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(ray_address, sweep_data, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "dies_once", f"{__name__}:_DiesOnce")  # reaches the workers with the run
    data, local = sweep_data
    out = tmp_path / "ray"
    records = run_sweep(_cfg(data, out, executor="ray", **{**KW, "methods": ["dies_once"], "seeds": [0]}))
    attempts = (out / "runs" / "dies_once_n1_s0" / "attempts.txt").read_text().splitlines()
    assert len(attempts) == 2 and attempts[0].endswith("False") and attempts[1].endswith("True")
    assert attempts[0].split()[1] != attempts[1].split()[1]  # another worker process
    (r,) = records
    ref = local[("none", 1, 0, "in-domain")]
    assert r["status"] == "ok" and r["per_case"] == ref["per_case"] and r["val_dice"] == ref["val_dice"]


class _AlwaysDies(NoAugmentation):
    name = "always_dies"

    def run(self, ctx):
        os.kill(os.getpid(), signal.SIGKILL)


def test_worker_dying_beyond_max_retries_is_a_failed_record(ray_address, sweep_data, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "always_dies", f"{__name__}:_AlwaysDies")
    data, _ = sweep_data
    (r,) = run_sweep(_cfg(data, tmp_path / "s", executor="ray", max_retries=0,
                          **{**KW, "methods": ["always_dies"], "seeds": [0]}))
    assert r["status"] == "failed" and "Worker" in r["error"] and r["method"] == "always_dies"


class _BadOption(NoAugmentation):
    name = "bad_option"

    def run(self, ctx):
        raise ConfigError("bad_option.x: no such option")


def test_user_error_on_a_worker_is_the_same_one_line_error(ray_address, sweep_data, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "bad_option", f"{__name__}:_BadOption")
    data, _ = sweep_data
    with pytest.raises(ConfigError) as e:
        run_sweep(_cfg(data, tmp_path / "s", executor="ray", **{**KW, "methods": ["bad_option"], "seeds": [0]}))
    assert str(e.value) == "bad_option.x: no such option"


def test_killed_driver_resumes(ray_address, sweep_data, tmp_path):
    """A driver killed (SIGKILL) after its first result; the rerun adds the missing runs only."""
    data, local = sweep_data
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "segsynth.cli", "sweep", "--data", str(data), "--out", str(out), "--methods",
           "none,augment", "--n", "1", "--seeds", "2", "--n-val", "2", "--n-test", "4", "--size", "32",
           "--unet-features", "4,4,8,8,16,4", "--steps", "4", "--batch-size", "2", "--val-every", "2",
           "--device", "cpu", "-q", "--executor", "ray", "--ray-address", ray_address,
           "--cpus-per-run", "2"]  # one run at a time: one fresh worker process for this driver
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = out / "results.jsonl"
    deadline = time.monotonic() + 900  # generous: a loaded machine (a benchmark beside the suite) is slow, not wrong
    while time.monotonic() < deadline and driver.poll() is None and not (results.exists() and results.stat().st_size):
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    assert results.exists() and results.stat().st_size, "the driver wrote no result in 900 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    first = [json.loads(line) for line in results.read_text().splitlines()]
    assert 1 <= len(first) < 4
    records = run_sweep(_cfg(data, out, executor="ray", **KW))
    assert cells(records) == local and len(read_jsonl(results)) == 4


def test_sharded_synthesis_on_ray_equals_local(ray_address, tmp_path):
    """`segsynth synthesize --shards 3`: Ray tasks write the same bytes as the local executor."""
    from segsynth.cli import main
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec
    from segsynth.generators.genseg import GenSegGenerator
    from tests.experiments.test_shards import tree
    from tests.generators.genseg.helpers import TINY

    data = write_png_dataset(tmp_path / "blobs", n=4)
    gen = GenSegGenerator(**TINY)
    gen.build_for(load_dataset(data, PreprocessSpec(size=32), progress=False).cases, seed=0)
    gen.save(tmp_path / "model")
    args = ["synthesize", "--model", str(tmp_path / "model"), "--augment-from", str(data), "--n", "6",
            "--shards", "3", "--device", "cpu", "-q"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", ray_address]) == 0
    local, remote = tree(tmp_path / "local"), tree(tmp_path / "ray")
    assert len([k for k in local if k.startswith("images/")]) == 6 and local == remote


@pytest.mark.slow
def test_ray_runs_nnunet(ray_address, sweep_data, tmp_path):
    """nnunet as a Ray task: nnU-Net's subprocesses start inside the worker, the record pairs with augment's."""
    from segsynth.generators.nnunet import nnunet_available

    if not nnunet_available():
        pytest.skip("nnunetv2 is not installed (make test installs it)")
    data, _ = sweep_data
    out = tmp_path / "ray_nnunet"
    records = run_sweep(_cfg(data, out, executor="ray", methods=["augment", "nnunet"], n_values=[2], seeds=[0],
                             sample_predictions=0, report=False, fidelity=False,
                             method_options={"nnunet": {"iterations_per_epoch": 2}}))
    by = {r["method"]: r for r in records}
    assert by["nnunet"]["status"] == "ok", by["nnunet"].get("error")
    assert by["nnunet"]["nnunet_budget"]["budget"] == "images"
    assert [c["case_id"] for c in by["nnunet"]["per_case"]] == [c["case_id"] for c in by["augment"]["per_case"]]
    assert (out / "runs" / "nnunet_n2_s0" / "nnunet" / "logs" / "train.log").exists()
