"""Errors a user can act on. Each message names the file (or folder) and the problem."""

from __future__ import annotations


class SegsynthError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 2."""


class DataError(SegsynthError):
    """A dataset file or folder cannot be used: unreadable, mismatched, bad labels, too few cases."""

    def __init__(self, problem: str, path: object | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(SegsynthError):
    """An option or combination of options that cannot work."""
