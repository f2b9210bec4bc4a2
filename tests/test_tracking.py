"""How stages share an MLflow run, end runs on failure, and promote by alias (real SQLite store)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline import record, tracking
from tests.conftest import params

# `store` and `project` (a real SQLite store, a temporary project root): tests/conftest.py


def test_uri_defaults_to_sqlite_under_the_repo_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    cfg = params().mlflow
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:1"


def test_stages_of_one_execution_share_a_run(project) -> None:
    with tracking.stage_run("prepare", project) as first:
        assert not first.continued
    with tracking.stage_run("train", project) as second:
        assert second.continued
    assert second.run_id == first.run_id
    run = mlflow.MlflowClient().get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline.stage.prepare"] == run.data.tags["pipeline.stage.train"] == "done"
    assert run.data.params["train.epochs"] == str(project.train.epochs)
    # every data source's keys, so runs on other sources compare on the same param columns
    assert run.data.params["data.n_train"] == str(project.data.n_train) and run.data.params["data.min_side"] == "n/a"
    assert json.loads(Path("runs/train.json").read_text())["run_id"] == first.run_id


def test_a_run_is_tagged_with_the_preset_whose_recipe_it_has(project) -> None:
    tags = {}
    for name, overrides in {"preset": ["experiment=tiny"], "changed": ["experiment=tiny", "train.lr=0.0123"]}.items():
        with tracking.stage_run("prepare", params(*overrides)) as run:
            pass
        tags[name] = mlflow.MlflowClient().get_run(run.run_id).data.tags
    assert tags["preset"]["pipeline.preset"] == "tiny"  # to filter runs by in the UI
    assert "pipeline.preset" not in tags["changed"]  # typed `experiment=tiny`, but not its recipe
    assert "train.lr=0.0123" in tags["changed"]["pipeline.config_diff"]


def test_a_stage_already_in_the_run_starts_a_new_execution(project) -> None:
    with tracking.stage_run("prepare", project):
        pass
    with tracking.stage_run("train", project) as a:
        pass
    with tracking.stage_run("train", project) as b:  # e.g. `dvc exp run -S train.lr=..`
        assert not b.continued
    assert a.run_id != b.run_id


def test_other_params_start_a_new_run(project) -> None:
    with tracking.stage_run("prepare", project) as a:
        pass
    project.train.lr = project.train.lr / 2
    with tracking.stage_run("train", project) as b:
        pass
    assert a.run_id != b.run_id


def test_failure_marks_the_run_failed_and_writes_no_record(project) -> None:
    with pytest.raises(RuntimeError), tracking.stage_run("prepare", project) as run:
        raise RuntimeError("boom")
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"
    assert not Path("runs/prepare.json").exists()


def test_interrupt_marks_the_run_killed(project) -> None:
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("prepare", project) as run:
        raise KeyboardInterrupt
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == "KILLED"
    # and a killed run is never continued
    with tracking.stage_run("train", project) as nxt:
        assert not nxt.continued


def test_a_stage_resumed_after_its_execution_died_links_to_the_dead_run(project) -> None:
    with tracking.stage_run("prepare", project) as prepared:
        pass
    mlflow.MlflowClient().set_terminated(prepared.run_id, "KILLED")  # train was SIGKILLed in this run
    with tracking.stage_run("train", project) as resumed:
        assert not resumed.continued
    tags = mlflow.MlflowClient().get_run(resumed.run_id).data.tags
    assert tags["pipeline.resumes_run"] == prepared.run_id
    # an unrelated new execution carries no link
    with tracking.stage_run("prepare", project) as fresh:
        pass
    assert "pipeline.resumes_run" not in mlflow.MlflowClient().get_run(fresh.run_id).data.tags


def test_runs_left_running_by_a_dead_process_are_marked_killed(project) -> None:
    experiment_id = tracking.connect(project.mlflow)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    client = mlflow.MlflowClient()
    orphan = client.create_run(experiment_id, tags={"pipeline.pid": dead, "pipeline.host": socket.gethostname()})
    alive = client.create_run(experiment_id, tags={"pipeline.pid": str(os.getpid()),
                                                   "pipeline.host": socket.gethostname()})
    assert orphan.info.run_id in tracking.mark_stale_runs(experiment_id)
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    client.set_terminated(alive.info.run_id)


def test_git_state_reports_commit_and_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    Path("code.py").write_text("a = 1\n")
    Path("params.yaml").write_text("x: 1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    clean = tracking.git_state()
    assert len(clean["commit"]) == 40 and clean["dirty"] == "false"
    Path("params.yaml").write_text("x: 2\n")  # DVC rewrites params.yaml during `dvc exp run`: not dirty
    assert tracking.git_state()["dirty"] == "false"
    Path("code.py").write_text("a = 2\n")
    assert tracking.git_state()["dirty"] == "true"


def test_the_registered_name_follows_the_data_family() -> None:
    assert params().data.family == "synthetic"
    assert params("data=fer2013_csv").data.family == "fer2013"  # a CSV is the same data


def _dataset(name: str):
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    return MetaDataset(source=LocalArtifactDatasetSource("data/prepared/train.npz"), name=name, digest="d" * 36)


def test_dataset_logging_survives_a_parallel_run_inserting_it_first(project, monkeypatch: pytest.MonkeyPatch) -> None:
    # what a tracking server answered in CI when two queued experiments logged the same split at once
    race = mlflow.exceptions.MlflowException("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: "
                                             "datasets.experiment_id, datasets.name, datasets.digest")
    real, calls = mlflow.log_input, []

    def racing(*args, **kwargs):
        calls.append(kwargs["context"])
        if len(calls) == 1:
            raise race
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with tracking.stage_run("prepare", project) as run:
        record.log_input(_dataset("synthetic-train"), context="train", tags={"rows": "5"})
    assert calls == ["train", "train"]
    inputs = mlflow.MlflowClient().get_run(run.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["synthetic-train"]


def test_dataset_logging_does_not_retry_other_errors(project, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise mlflow.exceptions.MlflowException("RESOURCE_DOES_NOT_EXIST: run gone")

    monkeypatch.setattr(mlflow, "log_input", failing)
    with pytest.raises(mlflow.exceptions.MlflowException, match="run gone"):
        record.log_input(_dataset("synthetic-val"), context="val", tags={})
    assert calls == [1]


def _unwritable(db: Path) -> list[str]:
    """Make `db` unwritable for this process, the way a user meets it: `chmod 444` (ignored by root, so as root
    `chattr +i`, which root obeys). The commands that undo it; skip where neither holds (e.g. no chattr)."""
    import sqlite3

    if os.geteuid() != 0:
        db.chmod(0o444)
        undo = ["chmod", "644", str(db)]
    elif subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(db)]
    else:
        pytest.skip("neither chmod (root) nor chattr makes a file read-only here")
    try:
        with sqlite3.connect(db) as probe:
            probe.execute("CREATE TABLE t (x)")
    except sqlite3.Error:
        return undo
    subprocess.run(undo, check=True)
    pytest.skip("the file is still writable here")


@pytest.mark.parametrize("kind", ["read-only file", "folder"])
def test_a_store_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path, monkeypatch, capfd, kind: str) -> None:
    db = tmp_path / "mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    project = params()
    undo: list[str] = []
    if kind == "folder":
        db.mkdir()
    else:
        with tracking.stage_run("prepare", project):  # a store with a run in it, as a user has
            pass
        undo = _unwritable(db)
    before = db.read_bytes() if db.is_file() else None
    try:
        with pytest.raises(SystemExit) as stop, tracking.stage_run("prepare", project):
            pass
    finally:
        if undo:
            subprocess.run(undo, check=True)
    assert str(stop.value.code).startswith(f"error: {db}: the MLflow store cannot be written (")
    assert "Traceback" not in capfd.readouterr().err
    assert (db.read_bytes() if db.is_file() else None) == before
