"""The project's error types: a user's mistake gets one clear line from the command, not a traceback."""

from __future__ import annotations


class MMLightningError(Exception):
    """Base of the errors ``mm-lightning`` reports as ``error: <message>`` (exit code 2)."""


class ConfigError(MMLightningError, ValueError):
    """A configuration names something that does not exist, or values that do not fit together."""


class DataError(MMLightningError, FileNotFoundError):
    """Prepared data is missing or incomplete where a config points."""
