"""One process per run folder: an advisory lock file that names its holder and dies with it.

The pipeline takes ``<run_dir>/.lock`` and every ``fit`` takes ``<checkpoint dir>/.lock``, so a second command on
the same folder stops with a message naming the first (its pid, host, command and start time) instead of
writing duplicate ``-v1`` checkpoints and event files, or moving a running stage's folder away. The lock is an
``fcntl.flock`` on the open file: the kernel releases it when the holder exits, however it exits, so a lock left
by a killed process is simply taken over. Where ``fcntl`` is missing (Windows) locking is skipped.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from mm_lightning.errors import MMLightningError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderBusy(MMLightningError, RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """Hold ``<folder>/.lock`` while the context (or until :meth:`release`); raise :class:`FolderBusy` if taken.

    Args:
        folder: the folder to own (created if missing).
        what: how messages name the folder's use (``"pipeline run folder"``).
    """

    def __init__(self, folder: str | Path, what: str = "run folder") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        if fcntl is None or self._file is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise FolderBusy(
                f"the {self.what} {self.path.parent} is in use by {holder}; wait for it to finish or stop it, "
                "or use another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()) + "\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock; the file stays (it is harmless)
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:300],
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"process {info['pid']} on {info['host']} (`{info['command']}`, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
