"""Files that are either whole or absent: checkpoints and small records written through a same-folder rename.

Lightning saves a checkpoint through fsspec's transaction, whose temporary file lives in ``$TMPDIR``: where that
is another filesystem, the final move is a copy, and a kill during it leaves a truncated ``last.ckpt`` (and an
orphaned temporary file). Here the temporary file sits beside the target (``.<name>.tmp-<pid>``), is flushed and
fsynced, then renamed over the target, which is atomic within one filesystem; the folder is fsynced so the rename
survives a power loss. :func:`remove_orphans` clears temporary files whose writer is dead.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(path)
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, or its old content if the process dies midway."""
    write_with(path, lambda f: f.write(data))


def copy_file(source: str | Path, target: str | Path) -> None:
    """Copy ``source`` to ``target`` atomically (a kill midway leaves ``target`` as it was)."""
    with open(source, "rb") as src:
        write_with(target, lambda f: shutil.copyfileobj(src, f, 1 << 24))


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporary files in ``folder`` whose writing process is gone; returns what was removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_local(path: str | Path) -> bool:
    """Whether ``path`` is a local path (no ``scheme://`` such as ``s3://``)."""
    return "://" not in str(path) or str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local files written by :func:`write_with` (remote ones unchanged)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: a failure here leaves no file at all
        write_bytes(str(path).removeprefix("file://"), buffer.getbuffer())
