"""Atomic outputs: what a writer killed mid-write (SIGKILL, power loss) leaves, and who removes it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.files import atomic_path, remove_stale_temporaries, write_json

KILLED_WRITER = """
import os, signal, sys
from pipeline.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a split")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target: Path) -> Path:
    """Run a real writer that is SIGKILLed inside `atomic_path`; return the temporary it left."""
    before = set(target.parent.iterdir()) if target.parent.exists() else set()
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=Path(__file__).parents[1])
    assert result.returncode == -signal.SIGKILL
    (left,) = set(target.parent.iterdir()) - before
    assert left.name.startswith(f".tmp-{target.stem}-") and not target.exists()
    return left


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "prepared" / "train.npz"
    left = _killed_write(target)
    write_json(target.with_name("report.json"), {"ok": True})  # any later write into the folder
    assert not left.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_only_our_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = tmp_path / f".tmp-train-pid{_dead_pid()}@{host}-abcd_123.npz"
    alive = tmp_path / f".tmp-val-pid{os.getpid()}@{host}-abcd_123.npz"  # a writer still at work
    elsewhere = tmp_path / f".tmp-test-pid{_dead_pid()}@not-{host}-abcd_123.npz"  # a shared folder, another host
    users = [tmp_path / ".tmp-notes.txt", tmp_path / "train.npz", tmp_path / f".tmp-x-pid1@{host}.txt"]
    for path in [dead, alive, elsewhere, *users]:
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(tmp_path.iterdir()) == sorted([alive, elsewhere, *users])


def test_a_stage_start_removes_what_its_killed_run_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    left = _killed_write(tmp_path / "data" / "prepared" / "train.npz")
    monkeypatch.setattr(sys, "argv", ["prepare"])
    cli.run(lambda: None, "", "prepare")  # a re-run that fails before it writes anything still cleans up
    assert not left.exists()


def test_a_temporary_is_still_renamed_into_place(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path
        tmp.write_text("model")
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
