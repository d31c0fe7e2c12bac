"""Shared fixtures: an isolated mm_lightning cache with the demo corpus prepared once per test session, and one
CPU thread for micro models; and how the suite splits over pytest-xdist workers (README, "Tests").

Under ``-n 2`` (the README's command) every test module runs whole on one worker, so a module fixture is built once
as in a serial run, and the modules that read the short demo pipeline run (the suite's costliest fixture, ~2 min;
``SHORT_DEMO_RUN_MODULES``, checked by the fixture) run on one worker, so that run is trained once. The demo corpus
cache is shared by the workers (its build is atomic, a concurrent build's loser discarded:
``mm_lightning.demo.corpora.build_once``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers.short_pipeline import run_pipeline_command, short_demo_pipeline
from helpers.tiny_checkpoints import build_tiny_checkpoints
from xdist.scheduler import LoadFileScheduling

from mm_lightning.inference import torch_threads

FREE_AT_START = pytest.StashKey[str]()
SHORT_DEMO_RUN_MODULES = (
    "tests/pipeline/test_pipeline_run.py",
    "tests/pipeline/test_tensorboard_events.py",
    "tests/test_notebooks.py",
    "tests/test_readme_commands.py",
)


def _free_disk(config: pytest.Config) -> str:
    folder = Path(config.option.basetemp or tempfile.gettempdir())
    while not folder.exists():  # an xdist worker's base folder is made after its configure
        folder = folder.parent
    return f"{shutil.disk_usage(folder).free / 2**30:.1f} GiB free at {folder}"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FREE_AT_START] = _free_disk(config)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The disk where the tests write, before and after (they need ~2.2 GB at the peak: the short demo runs'
    checkpoints), so that a "No space left on device" reads at once."""
    terminalreporter.write_line(f"disk: {config.stash[FREE_AT_START]} at the start, {_free_disk(config)} at the end")


class ModuleScheduling(LoadFileScheduling):
    """xdist's file-by-file scheduling, the modules that read the short demo pipeline run counted as one file."""

    def _split_scope(self, nodeid: str) -> str:
        module = super()._split_scope(nodeid)
        return "short_demo_run" if module in SHORT_DEMO_RUN_MODULES else module


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> ModuleScheduling:
    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def mm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide ``MM_LIGHTNING_CACHE`` in a temporary folder (set for the rest of the session), one folder
    for all xdist workers of the session."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # no xdist workers
        root = tmp_path_factory.mktemp("mm_lightning_cache")
    else:  # each worker's base folder sits in the session's shared one
        root = tmp_path_factory.getbasetemp().parent / "mm_lightning_cache"
        root.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_LIGHTNING_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def demo_sotu(mm_cache: Path) -> Path:
    """The ``demo:sotu`` shards, built once into ``mm_cache`` (so ``TextDataModule("demo:sotu")`` finds them)."""
    from mm_lightning.demo.corpora import ensure_demo_text

    return ensure_demo_text("demo:sotu")


@pytest.fixture(scope="session")
def demo_emoji(mm_cache: Path) -> Path:
    """The ``demo:emoji-scenes`` shards, generated once into ``mm_cache`` (for ``ImageTextDataModule``)."""
    from mm_lightning.demo.corpora import ensure_demo_image_text

    return ensure_demo_image_text("demo:emoji-scenes")


@pytest.fixture
def one_thread():
    """Micro models run their many tiny ops faster on one thread (and far faster on a shared, busy CPU)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_sotu, demo_emoji) -> dict[str, Path]:
    """One-step checkpoints of every stage (``text``, ``vit``, ``align``, ``joint``) whose input files are gone."""
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="session")
def _short_demo_run_folder(tmp_path_factory: pytest.TempPathFactory, demo_sotu, demo_emoji) -> Path:
    """One uninterrupted run of the demo pipeline with every stage cut to a few steps (~2-3 min); its run folder."""
    folder = tmp_path_factory.mktemp("pipeline_whole")
    result = run_pipeline_command(short_demo_pipeline(folder))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (folder / "stdout.txt").write_text(result.stdout)
    return folder / "run"


@pytest.fixture(scope="module")
def short_demo_run(request: pytest.FixtureRequest) -> Path:
    """The short demo run's folder, for a module in ``SHORT_DEMO_RUN_MODULES`` (another module's tests fail
    before the run is trained: on another xdist worker it would train it a second time)."""
    module = request.node.nodeid.split("::")[0]
    if module not in SHORT_DEMO_RUN_MODULES:
        pytest.fail(f"add {module} to SHORT_DEMO_RUN_MODULES in tests/conftest.py (it reads the short demo run)")
    return request.getfixturevalue("_short_demo_run_folder")
