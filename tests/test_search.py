"""The hyperparameter search: the space's validation (in-process), and a tiny study of real `dvc exp run`s."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import search
from pipeline.config import CONF_DIR, ConfigError
from pipeline.search import loop

from .conftest import Server, exp_revs, make_project_copy, project_env

METRIC = "test/accuracy"  # the default objective: a flat key of metrics/evaluate.json


# ---------------------------------------------------------------- the space (fast, no processes)
def preset(tmp_path: Path, body: str) -> Path:
    """A copy of conf/ with conf/search/case.yaml = default.yaml's settings + `body`."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "search" / "case.yaml").write_text("defaults:\n  - default\n  - _self_\n" + body)
    return conf


def space_error(tmp_path: Path, space: str, extra: str = "") -> str:
    conf = preset(tmp_path, extra + "space:\n" + space)
    with pytest.raises((ConfigError, SystemExit)) as e:
        search.check_space(search.load_search("case", conf_dir=conf), conf_dir=conf)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_valid_space_gives_its_distributions(tmp_path: Path) -> None:
    conf = preset(tmp_path, "overrides: [experiment=tiny]\nspace:\n"
                  "  train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
                  "  train.epochs: {type: int, low: 2, high: 8, step: 2}\n"
                  "  train.optimizer: {type: categorical, choices: [adam, adamw]}\n"
                  "  model: {type: categorical, choices: [small_cnn, seed_cnn]}\n")
    cfg = search.load_search("case", ["n_trials=3"], conf_dir=conf)
    dists = search.check_space(cfg, conf_dir=conf)
    assert cfg.n_trials == 3 and list(cfg.space) == ["train.lr", "train.epochs", "train.optimizer", "model"]
    assert (dists["train.lr"].low, dists["train.lr"].high, dists["train.lr"].log) == (1e-4, 1e-2, True)
    assert (dists["train.epochs"].low, dists["train.epochs"].high, dists["train.epochs"].step) == (2, 8, 2)
    assert dists["model"].choices == ("small_cnn", "seed_cnn")
    assert search.trial_overrides(cfg, {"train.lr": 0.001, "train.optimizer": "adam"}) == [
        "experiment=tiny", "train.lr=0.001", "train.optimizer=adam"]


@pytest.mark.parametrize(("space", "expected"), [
    ("  train.lr: {type: floaty, low: 0.1, high: 1}\n", "search.space.train.lr.type"),
    ("  train.lr: {type: float, low: 0.01, high: 0.001}\n", "search.space.train.lr: low = 0.01 > high = 0.001"),
    ("  train.lrr: {type: float, low: 0.001, high: 0.01}\n",
     "search.space.train.lrr: unknown key: not in the composed config (did you mean train.lr?)"),
    ("  train.lr: {type: float, low: 0, high: 0.01, log: true}\n", "search.space.train.lr: log = true needs low > 0"),
    ("  train.lr: {type: float, low: 0, high: 0.01}\n",
     "search.space.train.lr: the value 0.0 fails validation: train.lr = 0.0: must be > 0"),
    ("  train.lr: {type: float, high: 0.01}\n", "search.space.train.lr: type float needs low and high"),
    ("  train.epochs: {type: float, low: 1, high: 4}\n", "search.space.train.epochs: type float for a whole-number"),
    ("  train.epochs: {type: int, low: 1.5, high: 4}\n", "search.space.train.epochs.low = 1.5: must be a whole"),
    ("  train.optimizer: {type: float, low: 1, high: 4}\n", "search.space.train.optimizer: type float for a str"),
    ("  train.optimizer: {type: categorical, choices: []}\n", "search.space.train.optimizer: type categorical needs"),
    ("  train.optimizer: {type: categorical, choices: [adam, adm]}\n",
     "search.space.train.optimizer: the value adm fails validation"),
    ("  model: {type: categorical, choices: [small_cnn, big_cnn]}\n", "search.space.model.choices: 'big_cnn'"),
    ("  train.augment: {type: categorical, choices: [1]}\n", "search.space.train.augment: a section, not a value"),
    ("  train.lr: {type: float, low: 0.001, high: 0.01, lo: 1}\n", "search.space.train.lr.lo"),
])
def test_a_bad_space_is_one_line_naming_the_key(tmp_path: Path, space: str, expected: str) -> None:
    assert expected in space_error(tmp_path, space)


def test_a_key_fixed_and_searched_and_bad_settings_are_refused(tmp_path: Path) -> None:
    space = "  train.lr: {type: float, low: 0.001, high: 0.01}\n"
    assert "search.space.train.lr: also fixed in search.overrides" in space_error(
        tmp_path / "a", space, "overrides: [train.lr=0.1]\n")
    assert "search.overrides" in space_error(tmp_path / "b", space, "overrides: [train.nope=1]\n")
    assert "search.metrics_file = plots/x.json: must be one of" in space_error(
        tmp_path / "c", space, "metrics_file: plots/x.json\n")
    assert "search.n_trials = 0: must be >= 1" in space_error(tmp_path / "d", space, "n_trials: 0\n")
    assert "search.direction" in space_error(tmp_path / "e", space, "direction: up\n")
    assert ("search.metric = val/accuracy: the trials fit on train + val (train.include_val = true)" in space_error(
        tmp_path / "f", space, "metric: val/accuracy\nmetrics_file: metrics/train.json\n"
        "overrides: [experiment=fer2013]\n"))
    with pytest.raises(SystemExit, match=r"conf/search/nope.yaml: not found \(presets: .*tiny"):
        search.load_search("nope")


def test_the_shipped_presets_are_valid() -> None:
    for name in ("default", "tiny", "fer2013"):
        assert search.check_space(search.load_search(name))


def test_the_objective_is_a_flat_key_of_the_metrics_file(tmp_path: Path) -> None:
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps({"test/accuracy": 0.75, "test/macro_f1": 0.5, "variant": "int8"}))
    assert search.read_objective(path, "test/accuracy") == 0.75
    with pytest.raises(SystemExit, match=r"no key 'accuracy' \(set `metric`; its numeric keys: test/accuracy, te"):
        search.read_objective(path, "accuracy")
    with pytest.raises(SystemExit, match="variant = 'int8': not a number"):
        search.read_objective(path, "variant")


def test_a_failed_run_is_named_by_its_error_line() -> None:
    out = ["Running stage 'train':", "error: params.yaml: train.lr = -1.0: must be > 0",
           "ERROR: failed to reproduce 'train': failed to run: python -m pipeline.train, exited with 1"]
    assert search.error_line(out) == "error: params.yaml: train.lr = -1.0: must be > 0"
    assert search.error_line(out[2:]).startswith("ERROR: failed to reproduce 'train'")
    assert search.error_line([]) == "no output"


def test_the_study_counts_outcomes_and_its_summary_puts_the_best_first() -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    cfg = search.load_search("tiny")
    dist = {"train.lr": search.distribution("train.lr", cfg.space["train.lr"])}
    study = optuna.create_study(direction="maximize")
    for value, lr in ((0.5, 0.001), (0.9, 0.004), (0.7, 0.002)):
        study.add_trial(create_trial(params={"train.lr": lr}, distributions=dist, value=value,
                                     user_attrs={"experiment": f"tiny-{lr}"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"error": "dvc exp run exited with 1: boom"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"interrupted": True}))
    assert len(search.finished(study)) == 4  # the interrupted one does not count towards n_trials
    table = search.summary_markdown(study, cfg)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "trial |" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 0", "| 3", "| 4"]
    assert "Best: trial 1 (`tiny-0.004`), 0.9000" in table and "boom" in rows[3]
    short = search.summary_markdown(study, cfg, limit=len(table) - 100)  # an MLflow tag holds 8000 characters
    assert short.startswith(table[:300]) and "more trials (all in the study: searches/optuna.journal)" in short


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop alone: `dvc exp run` and MLflow replaced, so no process runs."""
    import optuna

    logged: list[tuple[int, str]] = []

    class FakeParent:
        run_id = "parent"

        def __init__(self, params: object, study: optuna.Study, cfg: search.SearchConfig) -> None: ...
        def adopt(self, child: str, study: str, number: int) -> None: ...
        def log_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            logged.append((trial.number, trial.state.name))
        def end(self, status: str) -> None:
            logged.append((-1, status))
        def link(self) -> str:
            return "-"

    def fake_trial(cfg: search.SearchConfig, params: dict, name: str, env: dict) -> search.TrialOutcome:
        if name.endswith("-t0"):
            raise search.TrialError("dvc exp run exited with 1: error: params.yaml: train.lr = 9.0: too big")
        assert env[search.PARENT_ENV] == "parent" and env[search.TRIAL_ENV] == f"tiny/{name[-1]}"
        return search.TrialOutcome(0.5, None)

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loop, "ParentRun", FakeParent)  # where the loop looks them up
    monkeypatch.setattr(loop, "run_trial", fake_trial)
    study = search.run_search(search.load_search("tiny"))
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[0].user_attrs["error"].endswith("train.lr = 9.0: too big")
    assert logged == [(0, "FAIL"), (1, "COMPLETE"), (-1, "FINISHED")]
    assert (tmp_path / "searches" / "optuna.journal").is_file()


def test_a_run_record_that_is_not_an_object_reads_as_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runs/evaluate.json edited into a list or cut short: the trial has no MLflow run (a list was a TypeError)."""
    from pipeline.files import read_run_record
    from pipeline.search import trial

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError):
        read_run_record("evaluate")
    (tmp_path / "runs").mkdir()
    for text in ("[]", '"run"', '{"run_id": '):
        (tmp_path / "runs" / "evaluate.json").write_text(text)
        with pytest.raises(ValueError):
            read_run_record("evaluate")
        assert trial._new_run(0) is None


# ---------------------------------------------------------------- a real study
def search_run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> str:
    """Run a search with its output in `log` (streamed: a timeout still shows how far it got)."""
    with log.open("w") as out:
        try:
            code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    output = log.read_text()
    assert code == 0, f"{' '.join(cmd)}: {code}\n{output[-4000:]}"
    return output


def trial_runs(server: Server, parent_id: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("fer-expression")
    return client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.mark.integration
def test_a_tiny_search_runs_dvc_experiments_under_one_parent_run(tmp_path: Path, mlflow_server: Server) -> None:
    import mlflow
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    work = tmp_path / "repo"
    env = project_env(mlflow_server.uri)
    make_project_copy(work, env, ["experiment=tiny"])
    cmd = [sys.executable, "-m", "pipeline.search", "tiny"]
    first = search_run([*cmd, "n_trials=1"], work, env, tmp_path / "search.log")

    def study() -> optuna.Study:
        storage = JournalStorage(JournalFileBackend(str(work / "searches/optuna.journal")))
        return optuna.load_study(study_name="tiny", storage=storage)

    client = mlflow.MlflowClient(mlflow_server.uri)
    parent_id = study().user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert [t.state for t in study().trials] == [optuna.trial.TrialState.COMPLETE], first[-3000:]
    assert parent.info.run_name == "search-tiny" and parent.info.status == "FINISHED"
    assert "| tiny-t0 |" in parent.data.tags["mlflow.note.content"]

    again = search_run(cmd, work, env, tmp_path / "again.log")  # the preset's n_trials=2: the same study goes on
    assert "1 of 2 trials done" in again
    trials = study().trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, again[-3000:]
    revs = exp_revs(work, env)
    for t in trials:  # each trial's value is its experiment's metric, as DVC recorded it
        assert t.user_attrs["experiment"] == f"tiny-t{t.number}"
        assert revs[f"tiny-t{t.number}"]["data"]["metrics"]["metrics/evaluate.json"]["data"][METRIC] == t.value
    values = [t.value for t in trials]
    parent = client.get_run(parent_id)  # one parent run across both invocations
    children = trial_runs(mlflow_server, parent_id)
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert {c.data.tags["pipeline.search.trial"] for c in children} == {"0", "1"}
    assert parent.data.metrics[f"best/{METRIC}"] == max(values)
    history = client.get_metric_history(parent_id, f"trial/{METRIC}")
    assert sorted((m.step, m.value) for m in history) == [(0, values[0]), (1, values[1])]
    assert {m.step for m in client.get_metric_history(parent_id, "trial/train.lr")} == {0, 1}
    assert parent.data.tags["best.trial"] == str(max(trials, key=lambda t: t.value).number)
    assert "| tiny-t1 |" in parent.data.tags["mlflow.note.content"]
