"""Stopping a child's process group: the search's `dvc exp run` trials and the screenshot servers rely on it."""

from __future__ import annotations

import signal
import subprocess
import sys

from pipeline.cli import stop_group

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(60)"


def _child(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_a_child_that_heeds_the_signal_ends_by_it() -> None:
    process = _child("import time; print('ready', flush=True); time.sleep(60)")
    stop_group(process, signal.SIGTERM, timeout=10)
    assert process.returncode == -signal.SIGTERM


def test_a_child_that_ignores_the_signal_is_killed_after_the_timeout() -> None:
    process = _child(IGNORES_TERM)
    stop_group(process, signal.SIGTERM, timeout=0.5)
    assert process.returncode == -signal.SIGKILL


def test_a_child_that_has_already_ended_is_no_error() -> None:
    process = _child("print('ready', flush=True)")
    process.wait()
    stop_group(process, signal.SIGTERM, timeout=1)
    assert process.returncode == 0
