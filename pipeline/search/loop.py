"""The search loop: one trial after another until `n_trials` have an outcome or `timeout_min` has passed."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from pipeline.config import CONF_DIR, ConfigError
from pipeline.flatparams import override_value
from pipeline.search.parent import ParentRun
from pipeline.search.preset import SearchConfig, SearchError
from pipeline.search.space import base_config, check_space, trial_overrides
from pipeline.search.study import best_trial, fail_orphans, finished, open_study
from pipeline.search.trial import TrialError, TrialOutcome, run_trial, trial_env


def _duplicate(study: optuna.Study, params: dict[str, Any]) -> FrozenTrial | None:
    """A complete trial with exactly these params: its DVC experiment would be the same."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.params == params), None)


def _one_trial(study: optuna.Study, cfg: SearchConfig, dists: dict[str, BaseDistribution],
               parent: ParentRun) -> None:
    trial = study.ask(dists)
    name = f"{cfg.study_name}-t{trial.number}"
    for key, value in {"pid": os.getpid(), "host": socket.gethostname(), "experiment": name}.items():
        trial.set_user_attr(key, value)
    print(f"[search] trial {trial.number}: {name}: {' '.join(trial_overrides(cfg, trial.params))}", flush=True)
    try:
        if same := _duplicate(study, trial.params):
            trial.set_user_attr("duplicate_of", same.number)
            trial.set_user_attr("experiment", same.user_attrs.get("experiment", ""))
            outcome = TrialOutcome(float(same.value), None)
            print(f"[search] trial {trial.number}: same params as trial {same.number}: its value, no new run")
        else:
            outcome = run_trial(cfg, trial.params, name, trial_env(parent.run_id, cfg.study_name, trial.number))
    except TrialError as e:
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        print(f"[search] trial {trial.number} failed: {e}", flush=True)
    except BaseException:  # Ctrl-C, or a SearchError: the trial has no outcome and does not count
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        if outcome.run_id:
            trial.set_user_attr("mlflow_run_id", outcome.run_id)
            parent.adopt(outcome.run_id, cfg.study_name, trial.number)
        study.tell(trial, outcome.value)
        print(f"[search] trial {trial.number}: {cfg.metric} = {outcome.value:.4f}", flush=True)
    parent.log_trial(study, study.trials[trial.number])


def run_search(cfg: SearchConfig, conf_dir: Path = CONF_DIR, root: Path = Path(".")) -> optuna.Study:
    """Run (or continue) the study until `n_trials` trials have an outcome or `timeout_min` has passed."""
    try:
        dists = check_space(cfg, conf_dir)
        _, params = base_config(cfg, conf_dir)
    except ConfigError as e:
        raise SearchError(f"error: {e}") from None
    if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode:
        raise SearchError("error: dvc exp run needs a git repository with a commit: run from the project root")
    study = open_study(cfg, root)
    fail_orphans(study)
    parent = ParentRun(params, study, cfg)
    deadline = time.monotonic() + cfg.timeout_min * 60 if cfg.timeout_min else None
    done = len(finished(study))
    print(f"[search] study {cfg.study_name} ({cfg.storage}): {done} of {cfg.n_trials} trials done; "
          f"MLflow: {parent.link()}", flush=True)
    status = "KILLED"
    try:
        while len(finished(study)) < cfg.n_trials:
            if deadline and time.monotonic() > deadline:
                print(f"[search] timeout_min = {cfg.timeout_min:g} reached: the same command continues the study")
                break
            _one_trial(study, cfg, dists, parent)
        status = "FINISHED"
    except SearchError:
        status = "FAILED"
        raise
    finally:
        parent.end(status)
    report(study, cfg, parent)
    return study


def report(study: optuna.Study, cfg: SearchConfig, parent: ParentRun) -> None:
    best = best_trial(study)
    if best is None:
        print(f"[search] no trial completed; MLflow: {parent.link()}")
        return
    name = best.user_attrs.get("experiment", "")
    print(f"[search] best: trial {best.number} ({name}) {cfg.metric} = {best.value:.4f} with "
          + " ".join(f"{k}={override_value(v)}" for k, v in best.params.items()))
    print(f"[search] the workspace holds the last trial; compare: dvc exp show; take the best: dvc exp apply {name}")
    print(f"[search] MLflow: {parent.link()}")
