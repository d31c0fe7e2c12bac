"""One process per run folder: the lock names its holder and dies with it."""

import os
import signal
import subprocess
import sys

import pytest

from mm_lightning.run_lock import FolderBusy, RunLock

HOLD = (
    "import sys, time; from mm_lightning.run_lock import RunLock\n"
    "lock = RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(60)"
)


def test_a_held_folder_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"in use by process {holder.pid} on .*since"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert str(os.getpid()) in lock.path.read_text()


def test_the_same_process_can_take_and_give_back_the_lock_repeatedly(tmp_path):
    for _ in range(2):
        with RunLock(tmp_path):
            pass
