"""Progress bars: one rule for every bar segsynth draws.

A bar is drawn only when the caller asks for one (``enabled``: e.g. not ``--quiet``) *and* standard error is a
terminal. Sent to a log file or a pipe (a sweep's output redirected, a Ray worker, CI), a tqdm bar writes every
update as a carriage-return line: thousands of them; there the one log line per run is the progress. Every bar
of the package comes from ``progress_bar`` (counted loops) or ``progress_iter`` (iterating a list).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def on_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: standard error, where the bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def show_progress(enabled: bool = True) -> bool:
    """The rule: bars when asked for and standard error is a terminal."""
    return bool(enabled) and on_terminal()


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it") -> tqdm:
    """A bar for a loop of ``total`` steps (``bar.update(n)``, ``bar.close()``); a silent one unless
    ``show_progress(enabled)``."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show_progress(enabled),
                dynamic_ncols=True, leave=False, file=sys.stderr)


def progress_iter(items: Iterable[T], desc: str, enabled: bool = True, unit: str = "case") -> Iterator[T]:
    """``items`` with a bar (see ``progress_bar``); the items themselves when no bar is shown."""
    if not show_progress(enabled):
        return iter(items)
    return iter(tqdm(items, desc=desc, unit=unit, dynamic_ncols=True, leave=False, file=sys.stderr))
