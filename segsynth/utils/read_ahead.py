"""Iterate ahead on a background thread: the next items are made while the caller works on this one.

``ReadAhead(items, depth)`` runs the iteration of ``items`` on a daemon thread, up to ``depth`` items ahead of
the caller, and hands them out in order. The training loop's ``Prefetcher`` draws batches with it while a step
computes; synthesis samples the next pairs with it (torch releases the GIL) while the current ones are
compressed and written (zlib releases it too). An exception raised while making an item is raised to the
caller at that item. Use it as a context manager (or call ``close``) so the thread stops when the caller ends
early. ``depth=0`` iterates on the caller's thread, and no thread is started.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """The items of ``items``, in order, made up to ``depth`` ahead on a thread named ``name``."""

    def __init__(self, items: Iterable[T], depth: int, name: str = "segsynth-read-ahead"):
        self._items = iter(items)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._done = False
        self.thread: threading.Thread | None = None
        if depth > 0:
            self.thread = threading.Thread(target=self._work, name=name, daemon=True)
            self.thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # raised on the caller's thread, at the item that failed
            self._put(("error", e))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self.thread is None:
            return next(self._items)
        kind, item = self._queue.get()
        if kind == "end":
            self._done = True
            raise StopIteration
        if kind == "error":
            self._done = True
            raise item
        return item

    def close(self) -> None:
        """Stop making items and wait for the thread to end; the iteration ends there (items made ahead and
        not handed out are dropped)."""
        self._done = True
        self._stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
