"""Iterate ahead on a background thread: the next items are made while the caller works on this one.

``read_ahead(items, depth)`` runs the iteration of ``items`` on a daemon thread, up to ``depth`` items ahead of
the caller, and yields them in order. Synthesis uses it to sample the next pairs (torch, which releases the
GIL) while the current ones are compressed and written (zlib releases it too). An exception raised while
making an item is raised to the caller at that item; closing the generator (or an exception in the caller)
stops the thread. ``depth=0`` iterates on the caller's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(items: Iterable[T], depth: int) -> Iterator[T]:
    """The items of ``items``, in order, made up to ``depth`` ahead on a background thread."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=int(depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", _END))
        except BaseException as e:  # raised on the caller's thread, at the item that failed
            put(("error", e))

    thread = threading.Thread(target=work, name="segsynth-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
