"""Hyperparameter search over DVC experiments with Optuna.

    python -m pipeline.search [PRESET] [key=value ...]     (make search SEARCH=PRESET SEARCH_ARGS="key=value")

PRESET is `conf/search/<PRESET>.yaml` (default: `default`); `key=value` overrides its keys, e.g. `n_trials=30`
or `metric=test/macro_f1`. Each trial is one `dvc exp run -n <study>-t<k> -S <override> ...`: the preset's
fixed `overrides` plus a value for every key of its `space`, sampled by Optuna. So each trial is a real DVC
experiment (`dvc exp show`) and a pipeline run in MLflow, and its objective is `metric` in the metrics file
the trial wrote (metrics/evaluate.json unless `metrics_file` names another). The study lives in `storage` (a
journal file under the repository): the same command again continues it up to `n_trials` trials that ran to
an outcome (an interrupted trial does not count). A trial whose `dvc exp run` fails is marked failed with its
error line and the search goes on. All trials nest under one parent MLflow run, `search-<study>`, that holds
each trial's values and objective (step = trial number), the best value and the best params.
The search config is composed apart from params.yaml: changing it never makes a stage re-run.
"""

# Modules, each importing only those before it: `preset` (the search config and its loading), `space` (the
# space checked against the composed config, Optuna's distributions), `trial` (one `dvc exp run` and its
# objective), `study` (the Optuna study: storage, counted trials, summary), `parent` (the MLflow parent run),
# `loop` (trial after trial); `__main__` is the command. The names below are the package's API; a test that
# replaces one (ParentRun, run_trial) patches it where it is used, in `loop`.

from pipeline.search.loop import report, run_search
from pipeline.search.parent import ParentRun
from pipeline.search.preset import Direction, ParamType, SearchConfig, SearchError, SpaceParam, load_search
from pipeline.search.space import base_config, check_space, config_groups, distribution, trial_overrides
from pipeline.search.study import best_trial, fail_orphans, finished, open_study, summary_markdown
from pipeline.search.trial import (
    PARENT_ENV,
    TRIAL_ENV,
    TrialError,
    TrialOutcome,
    dvc_exp_run,
    error_line,
    read_objective,
    run_trial,
    trial_env,
)

__all__ = [
    "PARENT_ENV", "TRIAL_ENV", "Direction", "ParamType", "ParentRun", "SearchConfig", "SearchError", "SpaceParam",
    "TrialError", "TrialOutcome", "base_config", "best_trial", "check_space", "config_groups", "distribution",
    "dvc_exp_run", "error_line", "fail_orphans", "finished", "load_search", "open_study", "read_objective",
    "report", "run_search", "run_trial", "summary_markdown", "trial_env", "trial_overrides",
]
