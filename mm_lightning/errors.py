"""The project's error types and its one exit-code policy: a user's mistake gets one clear line, not a traceback.

Every ``mm-lightning`` command runs under :func:`run_command`:

==========  ===============================================================================================
exit code   meaning
==========  ===============================================================================================
0           done
2           a user's mistake: an :class:`MMLightningError` (config, arguments, data) or an ``OSError`` (a
            missing or unreadable file, a full disk); one line ``mm-lightning <command>: error: ...``
130 / 143   stopped by Ctrl-C / SIGTERM (:class:`Terminated`); the same command continues where it stopped
N           :class:`Stopped`'s own code (a pipeline stage that failed or was killed)
1           anything else is a bug in mm_lightning, and keeps its traceback
==========  ===============================================================================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR = 2
INTERRUPTED = 130
TERMINATED = 143


class MMLightningError(Exception):
    """Base of the errors ``mm-lightning`` reports as ``error: <message>`` (exit code 2)."""


class ConfigError(MMLightningError, ValueError):
    """A configuration names something that does not exist, or values that do not fit together."""


class DataError(MMLightningError, FileNotFoundError):
    """Prepared data is missing or incomplete where a config points."""


class Stopped(MMLightningError):
    """The command stopped before it finished (a stage failed or was interrupted); the message says how to go on."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(Exception):
    """SIGTERM reached the command (torchrun stopping its workers, scancel, a job's time limit)."""


def find_user_error(error: BaseException) -> MMLightningError | None:
    """The project error behind ``error``, also when jsonargparse re-raised it while instantiating a class."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, MMLightningError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(message: str) -> str:
    """``message`` on one line: its lines stripped and joined, by a space after a colon and by ``"; "`` otherwise."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


def run_command(prog: str, command: Callable[[], object]) -> int:
    """Run ``command`` under the exit-code policy above and return its exit code.

    Args:
        prog: the command's name in messages (``"mm-lightning pipeline"``).
        command: the command's work; it returns normally when done, an ``int`` being its exit code.
    """
    try:
        result = command()
    except Stopped as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        return stop.exit_code
    except (KeyboardInterrupt, Terminated) as stop:
        print(f"{prog}: stopped; run the same command again to continue.", file=sys.stderr)
        return INTERRUPTED if isinstance(stop, KeyboardInterrupt) else TERMINATED
    except Exception as error:
        user_error = find_user_error(error) or (error if isinstance(error, OSError) else None)
        if user_error is None:
            raise
        message = one_line(str(user_error)) or type(user_error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)  # a user's mistake: one line, no traceback
        return USER_ERROR
    return result if isinstance(result, int) else 0
