"""Faults a user will cause, each with real processes: bad data and config, kills, servers that go away,
parallel experiments. What the user sees (one line), and what is kept (nothing half-written)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from pipeline.files import atomic_path, write_json

from .conftest import (
    exp_revs,
    free_port,
    make_project_copy,
    postgres_bin,
    project_env,
    run,
    run_queue,
    stage,
    stage_dir,
    start_mlflow_server,
    wait_for_epochs,
)

pytestmark = pytest.mark.integration

TINY = ["experiment=tiny"]


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- bad data, bad config
def test_bad_csv_row_stops_prepare_with_one_line_and_no_output(tmp_path: Path) -> None:
    csv = tmp_path / "fer.csv"
    csv.write_text("emotion,pixels,Usage\n3," + " ".join(["1"] * 2303) + ",Training\n")
    work, env = stage_dir(tmp_path, ["data=fer2013_csv", f"data.path={csv}"])
    result = stage("prepare", work, env)
    assert result.returncode == 1
    assert last_line(result) == f"error: {csv}:2: 2303 pixel values, expected 2304"
    assert not (work / "data").exists()


def test_any_section_typo_stops_the_first_stage_before_it_works(tmp_path: Path) -> None:
    work, env = stage_dir(tmp_path, [*TINY, "+evaluate.promote_metirc=accuracy"])
    result = stage("prepare", work, env)
    assert result.returncode == 1
    assert "params.yaml: evaluate.promote_metirc: unknown key (allowed in evaluate: promote_metric" in last_line(
        result)
    assert not (work / "data").exists() and not (work / "mlflow.db").exists()


def test_unknown_group_option_names_the_allowed_values(tmp_path: Path) -> None:
    work, env = stage_dir(tmp_path, TINY)
    params = OmegaConf.load(work / "params.yaml")
    params.model.name = "resnet"
    (work / "params.yaml").write_text(OmegaConf.to_yaml(params))
    result = stage("prepare", work, env)
    assert last_line(result).endswith("params.yaml: model.name = 'resnet': must be one of seed_cnn, convnet, resnet_se")


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"accura')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------- the tracking store
def _truncated_store(db: Path) -> bytes:
    """A real MLflow store cut to a third of its size (a full disk, a copy that stopped half-way)."""
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # creates the store and its tables
    data = db.read_bytes()
    db.unlink()
    return data[: len(data) // 3]


@pytest.mark.parametrize(("make", "says"), [
    (lambda db: b"", "the MLflow store is empty (0 bytes)"),
    (lambda db: b"PK\x03\x04" + bytes(range(256)) * 64, "not an SQLite file"),
    (_truncated_store, "not a usable MLflow store"),
], ids=["0-byte", "garbage", "truncated"])
def test_a_broken_default_store_is_one_line_naming_it_and_is_never_touched(tmp_path: Path, make, says: str) -> None:
    work, env = stage_dir(tmp_path, TINY)
    env.pop("MLFLOW_TRACKING_URI")  # the default store, sqlite:///<repo>/mlflow.db, as a user has it
    db = work / "mlflow.db"
    db.write_bytes(content := make(db))
    before = {p.name for p in work.iterdir()}
    result = stage("prepare", work, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [last_line(result)], result.stderr[-3000:]
    assert str(db) in errors[0] and says in errors[0]
    assert "restore it from a backup" in errors[0]  # how to recover, in the same line
    assert db.read_bytes() == content  # never replaced by a fresh, empty store
    assert {p.name for p in work.iterdir()} == before  # no data, no run record, no artifacts


# ---------------------------------------------------------------- interruption
def _run_status(work: Path, env: dict, run_id: str) -> str:
    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(run_id).info.status


def test_stopped_then_killed_training_resumes_and_finishes_with_the_same_epochs(tmp_path: Path) -> None:
    # small batches make each epoch a few seconds long, so the signals land mid-run even on a busy machine
    work, env = stage_dir(tmp_path, [*TINY, "train.epochs=6", "train.batch_size=16"])
    assert stage("prepare", work, env).returncode == 0
    run_id = json.loads((work / "runs/prepare.json").read_text())["run_id"]

    # SIGTERM (`kill`, systemd, a CI timeout) after the first epoch: one line saying where it stopped and how to
    # resume, the run ends KILLED, no model is written (Ctrl-C takes the same path: tests/test_train.py)
    train = subprocess.Popen([sys.executable, "-m", "pipeline.train"], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for_epochs(work, 1, train)
    assert train.poll() is None, "training finished before it could be interrupted"
    train.send_signal(signal.SIGTERM)
    _, err = train.communicate(timeout=120)
    assert train.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and err.count("interrupted") == 1
    match = re.fullmatch(r"\[train\] interrupted after epoch (\d+) of 6; the same command resumes from (\S+)",
                         err.strip().splitlines()[-1])
    assert match, err[-3000:]
    checkpoint = work / match[2]
    history = (checkpoint / "history.csv").read_text().strip().splitlines()
    assert int(match[1]) == len(history) - 1 >= 1  # the epoch it names is the last one the checkpoint holds
    assert (checkpoint / "backup").is_dir()
    assert _run_status(work, env, run_id) == "KILLED"
    assert not (work / "models/model.keras").exists()

    # SIGKILL after a further epoch: nothing can end the run, so the next start marks it KILLED
    train = subprocess.Popen([sys.executable, "-m", "pipeline.train"], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for_epochs(work, 3, train)
    train.kill()
    train.communicate(timeout=60)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("fer-expression").experiment_id
    killed_run = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert len(killed_run) == 1
    assert not (work / "models/model.keras").exists()

    final = stage("train", work, env)
    assert final.returncode == 0, final.stderr
    assert f"marked stale run {killed_run[0].info.run_id} KILLED" in final.stdout
    assert "resuming after epoch" in final.stdout
    assert _run_status(work, env, killed_run[0].info.run_id) == "KILLED"
    metrics = json.loads((work / "metrics/train.json").read_text())
    assert metrics["train/epochs"] == 6
    history = (work / "plots/train/history.csv").read_text().strip().splitlines()
    assert [int(line.split(",")[0]) for line in history[1:]] == [1, 2, 3, 4, 5, 6]
    assert (work / "models/model.keras").exists()
    assert not list((work / "models/checkpoints").iterdir())  # finished: nothing left to resume


# ---------------------------------------------------------------- services
def test_unreachable_server_at_start_is_a_clear_error_within_30s(tmp_path: Path) -> None:
    work, env = stage_dir(tmp_path, TINY, tracking_uri=f"http://user:s3cret@127.0.0.1:{free_port()}")
    start = time.monotonic()
    result = stage("prepare", work, env, timeout=60)
    assert time.monotonic() - start < 30
    assert result.returncode == 1
    assert last_line(result).startswith("error: MLflow tracking server http://***@127.0.0.1:")
    assert "unreachable" in last_line(result)
    assert "s3cret" not in result.stdout + result.stderr
    assert not (work / "data").exists()


def test_server_going_away_mid_training_fails_cleanly(tmp_path: Path) -> None:
    server = start_mlflow_server(tmp_path)
    try:
        work, env = stage_dir(tmp_path, [*TINY, "train.epochs=40"], tracking_uri=server.uri)
        assert stage("prepare", work, env).returncode == 0
        train = subprocess.Popen([sys.executable, "-m", "pipeline.train"], cwd=work, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_epochs(work, 1, train)
    finally:
        server.stop(signal.SIGKILL)
    gone = time.monotonic()
    _, err = train.communicate(timeout=120)
    assert time.monotonic() - gone < 30
    assert train.returncode == 1
    assert err.strip().splitlines()[-1].startswith(f"error: [train] MLflow at {server.uri} failed:")
    assert not (work / "models/model.keras").exists()
    assert list((work / "models/checkpoints").glob("*/backup"))  # the checkpoint survives for a resume


def test_credentials_never_reach_logs_or_outputs(tmp_path: Path, mlflow_server) -> None:
    uri = mlflow_server.uri.replace("http://", "http://alice:hunter2@")
    work, env = stage_dir(tmp_path, TINY, tracking_uri=uri)
    result = stage("prepare", work, env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "hunter2" not in (work / "runs/prepare.json").read_text()
    assert "http://***@127.0.0.1" in result.stdout


# ---------------------------------------------------------------- reproducibility
# ---------------------------------------------------------------- concurrency
@pytest.mark.skipif(postgres_bin() is not None, reason="tests/test_postgres.py queues the same two experiments "
                    "against a server on PostgreSQL (one 2-pipeline run is enough for `make test`)")
def test_two_queued_experiments_in_parallel_against_a_server(tmp_path: Path, mlflow_server) -> None:
    work = tmp_path / "repo"
    env = project_env(mlflow_server.uri)
    make_project_copy(work, env, TINY)
    # `-S` recomposes params.yaml from conf/ (DVC's Hydra support): the preset goes along each time
    run(["dvc", "exp", "run", "--queue", "-n", "q-one", "-S", "experiment=tiny", "-S", "train.epochs=1"], work, env)
    run(["dvc", "exp", "run", "--queue", "-n", "q-three", "-S", "experiment=tiny", "-S", "train.epochs=3"], work, env)
    status = run_queue(work, env, tmp_path / "queue.log")
    assert status.count("Success") == 2, status + run(["dvc", "queue", "logs", "q-one"], work, env).stdout

    # `-S` went through Hydra into each experiment's params, and `dvc exp show` lists accuracy and latency
    revs = exp_revs(work, env)
    for name, epochs in (("q-one", 1), ("q-three", 3)):
        data = revs[name]["data"]
        assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == epochs
        assert "test/accuracy" in data["metrics"]["metrics/evaluate.json"]["data"]
        assert "latency/ms_per_face" in data["metrics"]["metrics/benchmark.json"]["data"]

    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("fer-expression").experiment_id
    runs = {}
    for name in ("q-one", "q-three"):
        found = client.search_runs([experiment], f"tags.`dvc.exp_name` = '{name}'")
        assert len(found) == 1, name
        runs[name] = found[0]
        assert found[0].info.status == "FINISHED"
        assert all(found[0].data.tags.get(f"pipeline.stage.{s}") == "done"
                   for s in ("prepare", "train", "quantize", "benchmark", "evaluate"))
    versions = {r.data.tags["registered_version"] for r in runs.values()}
    assert len(versions) == 2
    # the champion is the best version scored on this test split (those of other tests on this server included)
    (digest,) = {client.get_model_version("fer-expression-synthetic", v).tags["test_digest"] for v in versions}
    same_split = [v for v in client.search_model_versions("name='fer-expression-synthetic'")
                  if v.tags.get("test_digest") == digest and "test_accuracy" in v.tags]
    best = max(float(v.tags["test_accuracy"]) for v in same_split)
    champion = client.get_model_version_by_alias("fer-expression-synthetic", "champion")
    assert float(champion.tags["test_accuracy"]) == best
