"""``.lightning_studio/on_start.sh``: installs the project as README command 1 does, once, whatever the start count."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".lightning_studio" / "on_start.sh"
FAKE = """#!/bin/bash
echo "$(basename "$0") $*" >> "{log}"
"""  # stands in for the Studio's python and the mm-lightning it installs: records each call, succeeds


def start_studio(home: Path, **env: str) -> subprocess.CompletedProcess:
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "mm-lightning"):
        (bin_dir / name).write_text(FAKE.format(log=home / "calls.log"))
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env = {"HOME": str(home), "PATH": path, **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=home, env=env, capture_output=True, text=True, timeout=60)


def test_on_start_installs_once_and_again_when_the_extras_change(tmp_path: Path) -> None:
    first, second = start_studio(tmp_path), start_studio(tmp_path)
    other = start_studio(tmp_path, MM_LIGHTNING_EXTRAS="hf")
    assert first.returncode == second.returncode == other.returncode == 0, first.stderr + other.stderr
    installs = [line for line in (tmp_path / "calls.log").read_text().splitlines() if "pip install" in line]
    assert installs == [f"python -m pip install --quiet -e {ROOT}[dev]", f"python -m pip install --quiet -e {ROOT}[hf]"]
    assert "nothing to do" in second.stdout


def test_on_start_without_a_clone_says_where_it_looked(tmp_path: Path) -> None:
    moved = tmp_path / "studio" / ".lightning_studio"  # the script alone in a Studio's home, no clone beside it
    moved.mkdir(parents=True)
    (moved / "on_start.sh").write_text(SCRIPT.read_text())
    run = subprocess.run(["bash", str(moved / "on_start.sh")], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1 and "no mm_lightning clone found" in run.stderr and "MM_LIGHTNING_DIR" in run.stderr
