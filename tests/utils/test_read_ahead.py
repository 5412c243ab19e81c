"""ReadAhead: items in order, made ahead on another thread, errors raised at their item, early close stops."""

from __future__ import annotations

import threading
import time

import pytest

from segsynth.utils.read_ahead import ReadAhead


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_items_in_order(depth):
    assert list(ReadAhead(iter(range(50)), depth)) == list(range(50))
    assert list(ReadAhead([], depth)) == []


def test_items_are_made_ahead_on_another_thread():
    made: list[tuple[int, str]] = []

    def items():
        for i in range(6):
            made.append((i, threading.current_thread().name))
            yield i

    it = ReadAhead(items(), 3)
    assert next(it) == 0
    deadline = time.time() + 5
    while len(made) < 4 and time.time() < deadline:  # 0 taken, 1-3 waiting in the queue
        time.sleep(0.01)
    assert len(made) == 4 and all(name == "segsynth-read-ahead" for _, name in made)
    assert list(it) == [1, 2, 3, 4, 5]


def test_an_error_is_raised_at_its_item():
    def items():
        yield 1
        yield 2
        raise ValueError("pair 3 failed")

    got = []
    with pytest.raises(ValueError, match="pair 3 failed"):
        for x in ReadAhead(items(), 2):
            got.append(x)
    assert got == [1, 2]


def test_closing_early_stops_the_thread():
    made = []

    def items():
        for i in range(10_000):
            made.append(i)
            yield i

    it = ReadAhead(items(), 2)
    assert next(it) == 0
    it.close()  # joins the thread: nothing is made after close
    n = len(made)
    time.sleep(0.05)
    assert len(made) == n <= 4
    assert not any(t.name == "segsynth-read-ahead" for t in threading.enumerate())


@pytest.mark.parametrize("depth", [0, 2])
def test_a_closed_read_ahead_ends_its_iteration(depth):
    it = ReadAhead(iter(range(100)), depth)
    assert next(it) == 0
    it.close()
    with pytest.raises(StopIteration):  # neither blocks nor goes on making items on the caller's thread
        next(it)
