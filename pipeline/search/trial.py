"""One trial: a `dvc exp run` of the sampled values, its objective and its MLflow run read back.

The trial's stages find the study's parent run in the environment (PARENT_ENV) and nest their run under it.
A failed run is a `TrialError` (one line, recorded on the trial; the search goes on); what no further trial
can fix (an objective key that is missing, an experiment name taken) is a `SearchError` that stops it.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import cli
from pipeline.files import read_run_record
from pipeline.inference.errors import first_line
from pipeline.search.preset import SearchConfig, SearchError
from pipeline.search.space import trial_overrides

PARENT_ENV = "PIPELINE_SEARCH_PARENT_RUN_ID"  # the study's MLflow run, for a trial's stages to nest under
TRIAL_ENV = "PIPELINE_SEARCH_TRIAL"  # <study>/<trial number>


class TrialError(RuntimeError):
    """A trial that failed: its message is the one line recorded on the trial."""


@dataclass
class TrialOutcome:
    value: float
    run_id: str | None  # the trial's pipeline run, None when no stage ran (everything restored from cache)



def read_objective(path: Path, key: str) -> float:
    """`key` of a flat metrics mapping; a missing key stops the search (no trial would have it)."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrialError(f"{path}: unreadable after the run ({first_line(e)})") from None
    if not isinstance(metrics, dict) or key not in metrics:
        numeric = [k for k, v in metrics.items() if isinstance(v, int | float)] if isinstance(metrics, dict) else []
        keys = ", ".join(numeric)
        raise SearchError(f"error: {path}: no key {key!r} (set `metric`; its numeric keys: {keys})")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SearchError(f"error: {path}: {key} = {value!r}: not a number")
    return float(value)


def dvc_command() -> str:
    """The dvc next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def trial_env(parent_run_id: str, study: str, number: int) -> dict[str, str]:
    """The trial's environment: the venv first on PATH (the stages run `python`), the study's parent run."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PATH": path, PARENT_ENV: parent_run_id, TRIAL_ENV: f"{study}/{number}"}


def error_line(lines: Iterable[str]) -> str:
    """The line that says why a run failed: a stage's own `error:` line, else DVC's `ERROR:`, else the last."""
    lines = [line.strip() for line in lines if line.strip()]
    for prefix in ("error:", "ERROR:"):
        if hits := [line for line in lines if line.startswith(prefix)]:
            return hits[-1][:300]
    return (lines or ["no output"])[-1][:300]


def dvc_exp_run(name: str, overrides: list[str], env: dict[str, str]) -> None:
    """`dvc exp run -n name -S ...` in the workspace, its output streamed; a failure -> one-line TrialError.

    DVC runs in its own process group, so a Ctrl-C reaches it exactly once (forwarded from here).
    """
    cmd = [dvc_command(), "exp", "run", "-n", name, *(arg for o in overrides for arg in ("-S", o))]
    print(f"[search] dvc {' '.join(cmd[1:])}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=80)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line)
        code = process.wait()
    except KeyboardInterrupt:
        cli.stop_group(process, signal.SIGINT, timeout=60)
        raise
    if code != 0:
        raise TrialError(f"dvc exp run exited with {code}: {error_line(tail)}")


def experiment_exists(name: str) -> bool:
    """Whether a DVC experiment of this name exists (any baseline): DVC would refuse to run it again."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                          text=True).stdout.split()
    return any(ref.rsplit("/", 1)[-1] == name for ref in refs)


def run_trial(cfg: SearchConfig, params: dict[str, Any], name: str, env: dict[str, str]) -> TrialOutcome:
    """One `dvc exp run` of the sampled params, then its objective and its MLflow run from the workspace."""
    if experiment_exists(name):
        raise SearchError(f"error: a DVC experiment named {name} exists already (a study of this name was "
                          "deleted?): choose another study_name, or `dvc exp remove` it")
    started_ms = int(time.time() * 1000)
    dvc_exp_run(name, trial_overrides(cfg, params), env)
    value = read_objective(cfg.objective_file, cfg.metric)
    return TrialOutcome(value, _new_run(started_ms))


def _new_run(started_ms: int) -> str | None:
    """The run the trial's last stage logged into, if this trial started it (not a cache restore)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run_id = read_run_record("evaluate")["run_id"]
        run = mlflow.MlflowClient().get_run(run_id)
    except (OSError, KeyError, ValueError, MlflowException):
        return None
    return run_id if run.info.start_time >= started_ms - 1000 else None
