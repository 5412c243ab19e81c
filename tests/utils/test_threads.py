"""The thread count: explicit > OMP_NUM_THREADS > usable cores minus the load of other processes, at least 1."""

import pytest

from segsynth.errors import ConfigError
from segsynth.utils.threads import choose_threads, usable_cores


def test_free_cores_minus_other_load():
    assert choose_threads(cores=16, load=0.2, env={}).threads == 16
    assert choose_threads(cores=16, load=5.6, env={}).threads == 10  # 6 cores busy elsewhere
    choice = choose_threads(cores=2, load=1.0, env={})  # one other torch process on 2 cores (issue 14)
    assert choice.threads == 1 and "2 usable cores" in choice.reason and "load 1.0" in choice.reason


def test_at_least_one_thread_on_an_overloaded_machine():
    assert choose_threads(cores=4, load=37.0, env={}).threads == 1
    assert choose_threads(cores=1, load=0.0, env={}).threads == 1


def test_torchrun_processes_share_the_free_cores():
    choice = choose_threads(cores=16, load=0.0, env={"LOCAL_WORLD_SIZE": "4"})
    assert choice.threads == 4 and "4 processes" in choice.reason


def test_explicit_choice_and_environment_win():
    assert choose_threads(3, cores=16, load=15.0, env={"OMP_NUM_THREADS": "8"}).threads == 3
    choice = choose_threads(cores=16, load=15.0, env={"OMP_NUM_THREADS": "8"})
    assert choice.threads == 8 and "OMP_NUM_THREADS" in choice.reason
    assert choose_threads(cores=16, load=0.0, env={"OMP_NUM_THREADS": "junk"}).threads == 16
    with pytest.raises(ConfigError, match="--threads"):
        choose_threads(0)


def test_usable_cores_is_this_process_affinity():
    import os

    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_cli_asks_openmp_to_wait_passively_before_torch_loads():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; import segsynth.cli; "
            "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "PASSIVE"]


def test_busy_cores_from_cpu_time_and_the_smallest_load_wins(monkeypatch):
    """An idle VM whose load average sits near 1 (kernel threads) must still get every core: the load is the
    smallest of load average, runnable count and the cores /proc/stat measures busy."""
    import os

    from segsynth.utils import threads

    samples = iter([(1000, 600), (1100, 700)])  # 100 jiffies elapsed, all idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    assert threads.busy_cores() == 0.0
    samples = iter([(1000, 600), (1100, 650)])  # half of all CPUs busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    assert threads.busy_cores() == pytest.approx(0.5 * (os.cpu_count() or 1))
    monkeypatch.setattr(threads, "busy_cores", lambda interval=0.3: 0.05)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 1.0, 1.2))
    assert threads.other_load() <= 0.05  # the runnable count may be smaller still
    assert choose_threads(cores=2, load=threads.other_load(), env={}).threads == 2
