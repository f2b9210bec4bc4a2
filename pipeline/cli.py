"""The entry point every stage module shares: `--help` prints what the stage does instead of running it, and
Ctrl-C (or SIGTERM) ends it with one line instead of a traceback. Outputs are written atomically, so an
interrupted stage leaves the previous ones untouched and `dvc repro` simply runs it again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from pipeline import artifacts
from pipeline.files import remove_stale_temporaries


def run(main: Callable[[], None], doc: str | None, stage: str) -> None:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(f"python -m pipeline.{stage}: {(doc or '').strip()}")
        return
    for folder in {path.parent for paths in artifacts.STAGE_FILES.get(stage, {}).values() for path in paths}:
        remove_stale_temporaries(folder)  # what a killed run of this stage left (SIGKILL, power loss)
    try:
        main()
    except KeyboardInterrupt:
        print(f"[{stage}] interrupted: nothing half-written was kept; `dvc repro` runs it again", file=sys.stderr)
        raise SystemExit(130) from None


def raise_interrupt(signum: int, frame: Any) -> None:
    """A SIGTERM handler: `kill` (or a CI timeout) then ends a stage or a search like Ctrl-C does, so the same
    cleanup runs (the MLflow run marked KILLED, the running trial marked failed) instead of none."""
    raise KeyboardInterrupt(f"signal {signum}")


def stop_group(process: subprocess.Popen, sig: signal.Signals, timeout: float) -> None:
    """Send `sig` to the process group a child leads (`start_new_session=True`), so that its own children (DVC's
    stages, mlflow's workers) stop with it; SIGKILL after `timeout` seconds if they have not."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
