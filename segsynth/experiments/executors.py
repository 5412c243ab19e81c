"""Where the runs of a sweep (and the shards of a synthesis) execute: in this process, or as Ray tasks.

Both executors have one small interface:

* ``share(obj)`` makes a large object available to the calls (local: the object itself; Ray: ``ray.put`` once
  into the object store, so the preprocessed cases travel to each worker node once, not once per run);
* ``run(fn, calls)`` runs ``fn(*args)`` for each ``args`` in ``calls`` and yields ``(index, value, error)`` as
  each call finishes (local: in order; Ray: in order of completion). ``error`` is None, or the exception a
  call ended with when it could not produce a value (Ray: a worker that died more than ``max_retries`` times);
  exceptions raised by ``fn`` itself propagate in both.

Only the caller (the driver) writes results; workers return them. A worker that dies (killed, out of memory,
node lost) is retried by Ray (``max_retries``); the work itself is written to resume from its own checkpoint.

Data reach the workers through Ray's object store. The alternative on a cluster with a shared file system is
to give every node the same dataset path; outputs written by workers (run checkpoints, sample overlays,
synthesis shards) go to ``--out``, which must then be on that shared file system too (see README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from segsynth.errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "--executor ray needs Ray: pip install 'segsynth[ray]' (or: pip install ray)"


class LocalExecutor:
    """Calls run one after the other in this process (the default; Ray is never imported)."""

    name = "local"

    def share(self, obj: Any) -> Any:
        return obj

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple]) -> Iterator[tuple[int, Any, BaseException | None]]:
        for i, args in enumerate(calls):
            yield i, fn(*args), None

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call_with_threads(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    """Inside a Ray task: torch uses the CPUs the task asked for (not every core of the node)."""
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(*args)


class RayExecutor:
    """Each call is one Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs.

    Args:
        address: a running cluster ("HOST:PORT" or "auto"); None starts a local Ray instance for this
            executor (shut down on ``close``) unless Ray is already initialised in this process.
        cpus, gpus: the resource request of each task (fractions allowed: 0.5 GPU = two runs per GPU).
        max_retries: how many times a task whose worker died is started again.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0, max_retries: int = 3):
        if cpus <= 0 or gpus < 0:
            raise ConfigError(f"--cpus-per-run must be > 0 and --gpus-per-run >= 0 (got {cpus}, {gpus})")
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(include_dashboard=False, log_to_driver=True)
                self._started = True
        self.cpus, self.gpus, self.max_retries = float(cpus), float(gpus), int(max_retries)
        self._pending: list[Any] = []
        log.info("Ray executor: %s, %s CPU(s) and %s GPU(s) per task; cluster resources %s",
                 address or ("local instance" if self._started else "the running instance"), cpus, gpus,
                 ray.cluster_resources())

    def share(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def run(self, fn: Callable[..., Any], calls: Sequence[tuple]) -> Iterator[tuple[int, Any, BaseException | None]]:
        ray = self._ray
        from ray.exceptions import RayTaskError

        remote = ray.remote(_call_with_threads).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                        max_retries=self.max_retries, name=getattr(fn, "__name__", "segsynth"))
        threads = max(1, int(self.cpus))
        index = {}
        for i, args in enumerate(calls):
            ref = remote.remote(fn, threads, *args)
            index[ref] = i
            self._pending.append(ref)
        while self._pending:
            ready, self._pending = ray.wait(self._pending, num_returns=1)
            ref = ready[0]
            try:
                value = ray.get(ref)
            except RayTaskError as e:  # fn raised: the same exception (and one-line message) as a local call
                raise (e.cause if isinstance(e.cause, BaseException) else e.as_instanceof_cause()) from None
            except ray.exceptions.RayError as e:  # the worker died max_retries + 1 times, or the task was lost
                yield index[ref], None, e
                continue
            yield index[ref], value, None

    def close(self) -> None:
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending = []
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError(RAY_INSTALL_HINT) from e
    return ray


def add_executor_options(p: Any, unit: str = "run") -> Any:
    """--executor, --ray-address, --cpus-per-UNIT, --gpus-per-UNIT (UNIT: "run" for sweeps, "shard" for
    synthesis); read them back with ``executor_options(args, unit)``."""
    g = p.add_argument_group("execution: this process or a Ray cluster")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help=f"local: one {unit} after the other in this process; ray: each {unit} a Ray task "
                        f"(needs pip install 'segsynth[ray]') (default local)")
    g.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="a running Ray cluster (`ray start --head` prints it; 'auto' finds the local one); "
                        "default: start a Ray instance on this machine for this command")
    g.add_argument(f"--cpus-per-{unit}", type=float, default=1.0,
                   help=f"CPUs each {unit} asks Ray for (and torch threads it uses) (default 1)")
    g.add_argument(f"--gpus-per-{unit}", type=float, default=0.0,
                   help=f"GPUs each {unit} asks Ray for; 0.5 puts two on one GPU (default 0)")
    return g


def executor_options(a: Any, unit: str = "run") -> dict[str, Any]:
    """The options added by ``add_executor_options`` as keyword arguments of ``make_executor``."""
    return {"name": a.executor, "address": a.ray_address, "cpus": getattr(a, f"cpus_per_{unit}"),
            "gpus": getattr(a, f"gpus_per_{unit}")}


def check_executor(name: str) -> None:
    """Fail early (before loading data) on an unknown executor, or on ``ray`` without Ray installed."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, not {name!r}")
    if name == "ray":
        import_ray()


def make_executor(name: str = "local", *, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0,
                  max_retries: int = 3) -> LocalExecutor | RayExecutor:
    """``local`` or ``ray`` (see the classes); options other than the name only apply to Ray."""
    if name == "local":
        if address:
            raise ConfigError("--ray-address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, cpus=cpus, gpus=gpus, max_retries=max_retries)
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, not {name!r}")
