"""MLflow for the stages: where runs go, how the stages of one execution share a run, registry, promotion.

Where: `MLFLOW_TRACKING_URI`, else `mlflow.tracking_uri`, else `sqlite:///<repo>/mlflow.db` with artifacts
in `<repo>/mlartifacts`. `<repo>` is `DVC_ROOT`, which DVC sets to the real repository even when a queued
experiment runs in a temporary copy, so every experiment lands in the same store.

One execution, one run: each stage writes `runs/<stage>.json` (a declared DVC output) with the id of the
run it logged into, and the next stage reads its upstream's file. It continues that run unless the run
already holds this stage (then this is a new execution: a fresh run), failed, or was made with other
params. A stage that DVC skips or restores from cache never starts, so it logs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from pipeline import artifacts, record
from pipeline.cli import raise_interrupt
from pipeline.config import MlflowConfig, Params
from pipeline.files import read_run_record, write_json
from pipeline.flatparams import logged_params, to_flat_dict
from pipeline.inference.contract import default_tracking_uri, repo_root
from pipeline.inference.errors import first_line
from pipeline.inference.registry import redact, sqlite_store_problem
from pipeline.metrics import epoch_metrics


def tracking_uri(cfg: MlflowConfig) -> str:
    """`MLFLOW_TRACKING_URI`, else `mlflow.tracking_uri`, else the embedded store under the repo root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri or default_tracking_uri()


def connect(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id; unreachable -> one-line exit.

    Timeouts and retries are set before the first request so that a server that is down fails within
    seconds (timeout x (retries + 1) plus a short backoff), not after MLflow's default two minutes.
    """
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, round(cfg.timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.retries)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # it prints credentials; we print a redacted link
    uri = tracking_uri(cfg)
    check_sqlite_store(uri)
    check_sqlite_writable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(cfg.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        location = (repo_root() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        try:  # the kind tag makes `mlflow ui` open on the training-runs view, not the GenAI one
            return client.create_experiment(cfg.experiment_name, artifact_location=location,
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # created meanwhile by a parallel experiment
            return client.get_experiment_by_name(cfg.experiment_name).experiment_id
    except Exception as e:
        reason = redact(first_line(e))[:200]
        if uri.startswith("sqlite:"):
            raise SystemExit(f"error: {uri}: not a usable MLflow store ({reason}); it is never replaced: move it "
                             "aside to start a new one, or restore it from a backup") from None
        raise SystemExit(f"error: MLflow tracking server {redact(uri)} unreachable or failing: {reason} "
                         "(set by mlflow.tracking_uri or MLFLOW_TRACKING_URI)") from None


def check_sqlite_store(uri: str) -> None:
    """An embedded store that exists but is empty or not SQLite: one line, never a silent new store."""
    if problem := sqlite_store_problem(uri):
        raise SystemExit(f"error: {problem}")


def check_sqlite_writable(uri: str) -> None:
    """An embedded store that this process cannot write (read-only file or folder, `chattr +i`, a folder in its
    place): one line naming the file, before MLflow logs a 200-line traceback per failed statement or retries
    for minutes. The probe is a table created inside a transaction that is rolled back: nothing is changed."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    problem = None
    if path.is_dir():
        problem = "a folder, not a file"
    elif path.is_file():
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30, isolation_level=None)
            with contextlib.closing(db):
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("CREATE TABLE pipeline_write_probe (x)")
                finally:
                    db.execute("ROLLBACK")
        except sqlite3.Error as e:  # only a refusal to write is this check's to report: busy (a parallel
            # writer) is not read-only, and a damaged file is connect()'s "not a usable MLflow store"
            problem = str(e) if any(w in str(e) for w in ("readonly", "read-only", "unable to open")) else None
    elif path.parent.is_dir():  # a new store: SQLite must be able to create it
        try:
            tempfile.TemporaryFile(dir=path.parent).close()
        except OSError as e:
            problem = f"its folder is not writable: {e.strerror}"
    if problem:
        raise SystemExit(f"error: {path}: the MLflow store cannot be written ({problem}); nothing was changed: "
                         "check the permissions of the file and its folder (and `lsattr`: chattr -i), or point "
                         "mlflow.tracking_uri / MLFLOW_TRACKING_URI at a writable store")


def dvc_written_paths() -> list[str]:
    """Files DVC itself writes during a run: params.yaml (composition), dvc.lock, every declared output."""
    return ["params.yaml", "dvc.lock"] + [str(path) for stage in artifacts.STAGES for path in artifacts.writes(stage)]


def git_state() -> dict[str, str]:
    """Commit of the code and whether tracked files differ from it, not counting what DVC writes itself
    (outputs, dvc.lock, params.yaml, the .gitignore entries it adds): those change in every run."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    excluded = [f":(exclude){p}" for p in dvc_written_paths()] + [":(exclude,glob)**/.gitignore"]
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return {"commit": commit or "unknown", "dirty": "true" if changes else "false"}


def data_dependency_md5(data_path: str) -> str | None:
    """The hash DVC recorded for the raw data (`${data.path}`) in dvc.lock, once prepare has run."""
    import yaml

    try:
        lock = yaml.safe_load(Path("dvc.lock").read_text())
        deps = lock["stages"]["prepare"]["deps"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return next((d.get("md5") or d.get("hash") for d in deps if d.get("path") == data_path), None)


def params_digest(params: Params) -> str:
    return hashlib.sha256(json.dumps(to_flat_dict(params), sort_keys=True, default=str).encode()).hexdigest()


def mark_stale_runs(experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process of this host that no longer exists (SIGKILL, power loss) -> KILLED."""
    client = mlflow.MlflowClient()
    stale = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=200):
        pid, host = run.data.tags.get("pipeline.pid"), run.data.tags.get("pipeline.host")
        if host != socket.gethostname() or not pid or process_alive(int(pid)):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        stale.append(run.info.run_id)
    return stale


def process_alive(pid: int) -> bool:
    """Whether a process of this host still exists (a stage's or a search's, recorded in a tag)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tags() -> dict[str, str]:
    """The tags by which `mark_stale_runs` finds a run whose process is gone (SIGKILL): a stage's or a search's."""
    return {"pipeline.pid": str(os.getpid()), "pipeline.host": socket.gethostname()}


def _continuable_run(stage: str, digest: str) -> tuple[str | None, str | None]:
    """(the upstream stage's run id if this stage belongs to the same execution, else None; the run of the
    same execution if that one was interrupted, so the new run can link to it, else None)."""
    upstream = artifacts.continues(stage)
    if upstream is None:
        return None, None
    try:
        run_id = read_run_record(upstream)["run_id"]
        run = mlflow.MlflowClient().get_run(run_id)
    except (OSError, KeyError, ValueError, MlflowException):
        return None, None
    tags = run.data.tags
    if tags.get("pipeline.params_digest") != digest:
        return None, None
    if run.info.status in ("FAILED", "KILLED"):  # never reopened: a resumed stage starts a linked run
        return None, run_id
    return (None if tags.get(f"pipeline.stage.{stage}") else run_id), None


@dataclasses.dataclass
class StageRun:
    run_id: str
    continued: bool


def _end_run_quietly(status: int) -> None:
    """End the active run with `status`; if the store itself is gone, the next start marks it stale."""
    with contextlib.suppress(Exception):  # the stage is failing anyway: its own error is the one to show
        mlflow.end_run(RunStatus.to_string(status))


def _start(run_id: str | None, experiment_id: str, params: Params, digest: str,
           interrupted: str | None) -> mlflow.ActiveRun:
    """Continue `run_id`, or start a new run tagged with what made it: commit, DVC experiment, params digest."""
    if run_id:
        return mlflow.start_run(run_id=run_id, experiment_id=experiment_id)
    git, exp_name = git_state(), os.environ.get("DVC_EXP_NAME", "")
    tags = {"mlflow.source.git.commit": git["commit"], "git.dirty": git["dirty"],
            "mlflow.source.name": "dvc.yaml",  # the run is the pipeline's, not its first stage's script
            "pipeline.params_digest": digest, "pipeline.data_family": params.data.family}
    if exp_name:  # `dvc repro` has none: the run is then named after the commit
        tags["dvc.exp_name"] = exp_name
    if interrupted:  # e.g. a training resumed from its checkpoint after the machine went down
        tags["pipeline.resumes_run"] = interrupted
    if parent := os.environ.get("PIPELINE_SEARCH_PARENT_RUN_ID"):  # a trial of pipeline.search
        tags["mlflow.parentRunId"] = parent  # nests the trial's run under its study's run
    return mlflow.start_run(experiment_id=experiment_id, run_name=exp_name or f"repro-{git['commit'][:7]}",
                            tags=tags | config_tags(params))


@contextlib.contextmanager
def stage_run(stage: str, params: Params) -> Iterator[StageRun]:
    """Log a stage into its execution's run; FAILED on error, KILLED on SIGINT/SIGTERM, never left RUNNING."""
    experiment_id = connect(params.mlflow)
    for run_id in mark_stale_runs(experiment_id):
        print(f"[{stage}] marked stale run {run_id} KILLED (its process is gone)")
    digest = params_digest(params)
    run_id, interrupted = _continuable_run(stage, digest)
    data_md5 = data_dependency_md5(params.data.path) if stage != "prepare" else None  # prepare's lock entry
    # is written by DVC after prepare ends, so the first later stage records it
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    run = _start(run_id, experiment_id, params, digest, interrupted)
    try:
        mlflow.set_tags(process_tags() | {f"pipeline.stage.{stage}": "running", "pipeline.status": f"{stage} running"}
                        | ({"dvc.data_md5": data_md5} if data_md5 else {}))
        if run_id is None:
            mlflow.log_params(logged_params(params))
            record.restore_skipped_stages(stage)
        how = "continuing" if run_id else f"new, resuming interrupted run {interrupted}" if interrupted else "new"
        print(f"[{stage}] MLflow run {run.info.run_id} ({how}): "
              f"{ui_base(params.mlflow)}/#/experiments/{experiment_id}/runs/{run.info.run_id}")
        yield StageRun(run.info.run_id, continued=run_id is not None)
        mlflow.set_tags({f"pipeline.stage.{stage}": "done", "pipeline.status": f"{stage} done"})
        if f"pipeline.restored.{stage}" in mlflow.get_run(run.info.run_id).data.tags:  # it ran after all
            mlflow.delete_tag(f"pipeline.restored.{stage}")
        record.describe_run(run.info.run_id)
    except KeyboardInterrupt:
        _mark_stage(stage, "killed")
        _end_run_quietly(RunStatus.KILLED)
        raise
    except (MlflowException, OSError) as e:  # the tracking server failed or went away mid-stage
        _end_run_quietly(RunStatus.FAILED)
        reason = redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:240]
        raise SystemExit(f"error: [{stage}] MLflow at {redact(tracking_uri(params.mlflow))} failed: {reason}") from None
    except BaseException:
        _mark_stage(stage, "failed")
        _end_run_quietly(RunStatus.FAILED)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    mlflow.end_run()
    write_json(artifacts.run_record(stage), {"run_id": run.info.run_id, "experiment_id": experiment_id,
                                             "tracking_uri": redact(tracking_uri(params.mlflow))})


def ui_base(cfg: MlflowConfig) -> str:
    return record.ui_base(redact(tracking_uri(cfg)))


def config_tags(params: Params) -> dict[str, str]:
    """`pipeline.config_diff`: the params that differ from `conf/`'s default composition, for the run's
    description (kept short); `pipeline.preset`: the experiment preset whose recipe the run has, as the
    preset was then (a later edit of the preset does not rename old runs), to filter runs by in the UI."""
    from pipeline.config import compose, parse_params
    from pipeline.flatparams import preset_of, preset_params

    flat, tags = to_flat_dict(params), {}
    with contextlib.suppress(Exception):  # conf/ unreadable here: the params are logged in full anyway
        tags["pipeline.config_diff"] = record.config_diff(flat, to_flat_dict(parse_params(compose())))[:4000]
    if preset := preset_of(flat, preset_params()):
        tags["pipeline.preset"] = preset
    return tags


def links(cfg: MlflowConfig, experiment_id: str, model_name: str) -> str:
    """The runs table (training view) and the registered model, as the user opens them."""
    base = ui_base(cfg)
    how = "" if base.startswith(redact(tracking_uri(cfg)).rstrip("/")) else \
        f" (after `mlflow ui --backend-store-uri {redact(tracking_uri(cfg))}`)"
    return f"runs: {record.runs_table_link(base, experiment_id)}  model: {record.model_link(base, model_name)}{how}"


def _mark_stage(stage: str, state: str) -> None:
    with contextlib.suppress(Exception):  # the stage's own error is the one to show
        mlflow.set_tags({f"pipeline.stage.{stage}": state, "pipeline.status": f"{stage} {state}"})


def log_step_metrics(logs: dict[str, float], step: int) -> None:
    """One epoch of the training curves, under the `epoch/` names of pipeline/metrics.py."""
    mlflow.log_metrics(epoch_metrics(logs), step=step)


def log_teacher_step_metrics(logs: dict[str, float], step: int) -> None:
    """One epoch of a teacher fitted before the student (`train.distill.fit`), under `teachers/epoch/`, so
    that its curves stay apart from the student's."""
    mlflow.log_metrics({f"teachers/{k}": v for k, v in epoch_metrics(logs).items()}, step=step)


# ---------------------------------------------------------------- registry
def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, str(key), str(value))


def describe_version(name: str, version: str) -> None:
    record.describe_version(name, version)


def promote(name: str, version: str, metric: str, value: float, test_digest: str,
            on_new_test_split: str = "keep", floor: float | None = None,
            release: tuple[str, float] | None = None) -> dict[str, Any]:
    """`registry.promote` against this store, locked under the repo root (see there for the rule)."""
    from pipeline.inference import registry

    return registry.promote(mlflow.MlflowClient(), name, version, metric, value, test_digest,
                            repo_root() / artifacts.PROMOTION_LOCK, on_new_test_split, floor, release)

