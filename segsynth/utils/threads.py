"""How many CPU threads torch should use: the cores actually free, not every core the machine has.

With other busy processes on the machine, torch's default (one thread per core) oversubscribes the CPUs and
OpenMP's spinning threads fight each other: measured 20-30x slower (724 s vs 62 s for the same 500 steps
beside one other torch process). ``choose_threads`` picks the cores this process may run on
(``os.sched_getaffinity``, a cgroup CPU quota), minus the load other processes put on them
(``os.getloadavg``, ``/proc/stat``), shared among the processes ``torchrun`` starts on this machine, and at least 1.
``OMP_WAIT_POLICY=PASSIVE`` (set by the CLI before torch starts) makes idle OpenMP threads sleep instead of
spinning.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> tuple[int, int] | None:
    """(total, idle) jiffies of all CPUs from ``/proc/stat``; None where there is no such file."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return sum(fields), fields[3] + fields[4]  # idle + iowait


def busy_cores(interval: float = 0.3) -> float | None:
    """CPU cores other processes keep busy right now: the busy share of all CPUs over ``interval`` seconds
    (``/proc/stat``), during which this process sleeps, times the number of CPUs. None where not measurable."""
    import time

    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[0] <= first[0]:
        return None
    busy = 1.0 - (second[1] - first[1]) / (second[0] - first[0])
    return max(0.0, busy) * (os.cpu_count() or 1)


def other_load() -> float:
    """Load that other processes put on the CPUs: the smallest of the 1-minute load average, the number of
    other processes runnable right now (``/proc/loadavg``) and the cores measured busy over 0.3 s
    (``/proc/stat``). The average alone still counts a job that has just finished (a ``pip install`` before
    ``make demo``) and, on some virtual machines, idle kernel threads (a load near 1 on an idle machine was seen);
    the runnable count alone counts a momentary blip. 0 where the system has none of them."""
    measures: list[float] = []
    try:
        measures.append(float(os.getloadavg()[0]))
    except (AttributeError, OSError):
        return 0.0
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        measures.append(float(max(0, running - 1)))  # the snapshot counts this process too
    except (OSError, ValueError, IndexError):
        pass
    busy = busy_cores()
    if busy is not None:
        measures.append(busy)
    return min(measures)


def choose_threads(requested: int | None = None, *, cores: int | None = None, load: float | None = None,
                   env: Mapping[str, str] | None = None) -> ThreadChoice:
    """The number of torch threads to use, and why (for the log).

    Order: ``requested`` (``--threads``), else ``OMP_NUM_THREADS`` from the environment, else the usable
    cores minus the load of other processes (rounded), divided among ``LOCAL_WORLD_SIZE`` processes
    (torchrun), at least 1.

    Args:
        requested: an explicit thread count (>= 1).
        cores, load, env: the machine's usable cores, the load of other processes (``other_load``) and environment (default:
            measured now); given by tests.
    """
    env = os.environ if env is None else env
    if requested is not None:
        if requested < 1:
            from segsynth.errors import ConfigError

            raise ConfigError(f"--threads must be >= 1, got {requested}")
        return ThreadChoice(requested, f"--threads {requested}")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), f"OMP_NUM_THREADS={omp} in the environment")
    cores = usable_cores() if cores is None else cores
    load = other_load() if load is None else load
    busy = min(cores - 1, max(0, int(round(load))))
    lws = str(env.get("LOCAL_WORLD_SIZE", "1")).strip()
    procs = int(lws) if lws.isdigit() and int(lws) >= 1 else 1
    threads = max(1, (cores - busy) // procs)
    why = f"{cores} usable cores, load {load:.1f} from other processes"
    if procs > 1:
        why += f", shared by {procs} processes on this machine"
    return ThreadChoice(threads, why)


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op threads (and inter-op, when torch still allows it) and log the choice once."""
    import torch

    torch.set_num_threads(choice.threads)
    try:
        torch.set_num_interop_threads(max(1, min(choice.threads, 4)))
    except RuntimeError:  # only settable before the first parallel work; harmless to keep the default then
        pass
    log.info("using %d CPU thread%s (%s; --threads N to choose; OMP_WAIT_POLICY=%s)", choice.threads,
             "" if choice.threads == 1 else "s", choice.reason, os.environ.get("OMP_WAIT_POLICY", "default"))
