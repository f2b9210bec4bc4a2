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

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import optuna
from omegaconf import MISSING, DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from pipeline import artifacts, cli
from pipeline.config import CONF_DIR, ConfigError, Params, compose, override_value, parse_params, validate_section
from pipeline.tracking import process_alive

PARENT_ENV = "PIPELINE_SEARCH_PARENT_RUN_ID"  # the study's MLflow run, for a trial's stages to nest under
TRIAL_ENV = "PIPELINE_SEARCH_TRIAL"  # <study>/<trial number>
GROUP = "search"  # conf/search/: never in conf/config.yaml's defaults, so never in params.yaml


class ParamType(StrEnum):
    float = "float"
    int = "int"
    categorical = "categorical"


class Direction(StrEnum):
    maximize = "maximize"
    minimize = "minimize"


@dataclass
class SpaceParam:
    """One searched key: a number range (`low`..`high`, `log`, `step`) or a list of `choices`."""

    type: ParamType = MISSING
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class SearchConfig:
    study_name: str = MISSING
    n_trials: int = field(default=MISSING, metadata={"ge": 1})
    timeout_min: float = field(default=MISSING, metadata={"ge": 0.0})  # 0 = none; checked before each trial
    seed: int = MISSING
    direction: Direction = MISSING
    metric: str = MISSING  # a key of the flat metrics file
    metrics_file: str | None = MISSING  # null = artifacts.EVALUATE_METRICS
    storage: str = MISSING  # a journal file (relative to the repo root) or an Optuna storage URL
    overrides: list[str] = MISSING  # fixed Hydra overrides of every trial, e.g. experiment=fer2013
    space: dict[str, SpaceParam] = field(default_factory=dict)

    @property
    def objective_file(self) -> Path:
        return Path(self.metrics_file) if self.metrics_file else artifacts.EVALUATE_METRICS


class TrialError(RuntimeError):
    """A trial that failed: its message is the one line recorded on the trial."""


class SearchError(SystemExit):
    """A problem that no further trial can fix (a config or setup error): stops the search."""


# ---------------------------------------------------------------- config and space
def load_search(preset: str = "default", overrides: list[str] | None = None,
                conf_dir: Path = CONF_DIR) -> SearchConfig:
    """`conf/search/<preset>.yaml` (with its defaults) and `key=value` overrides of it, validated."""
    where = f"conf/{GROUP}/{preset}.yaml"
    if not (conf_dir / GROUP / f"{preset}.yaml").is_file():
        presets = sorted(p.stem for p in (conf_dir / GROUP).glob("*.yaml"))
        raise SearchError(f"error: {where}: not found (presets: {', '.join(presets)})")
    keys = [f.name for f in dataclasses.fields(SearchConfig) if f.name != "space"]
    for override in overrides or []:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".")[0] == "space":
            raise SearchError(f"error: {override}: the space is edited in a preset file (its keys hold dots)")
        if key not in keys:
            raise SearchError(f"error: {override}: unknown key {key!r} (allowed: {', '.join(keys)})")
    try:
        raw = compose([f"+{GROUP}={preset}", *(f"{GROUP}.{o}" for o in overrides or [])], conf_dir=conf_dir)[GROUP]
        own = OmegaConf.load(conf_dir / GROUP / f"{preset}.yaml")
        if "space" in own:  # a preset's space replaces the inherited one (Hydra would merge the two)
            raw.space = own.space
        if isinstance(raw.get("space"), DictConfig):  # each entry alone, so a message lists its own keys
            for key, entry in raw.space.items():
                validate_section(entry, f"{GROUP}.space.{key}", SpaceParam)
        return validate_section(raw, GROUP, SearchConfig)
    except ConfigError as e:
        raise SearchError(f"error: {where}: {e}") from None
    except Exception as e:  # Hydra's override and composition errors: their first line
        raise SearchError(f"error: {where}: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def base_config(cfg: SearchConfig, conf_dir: Path = CONF_DIR) -> tuple[DictConfig, Params]:
    """The config every trial starts from (conf/ plus the fixed overrides), raw and validated."""
    try:
        raw = compose(list(cfg.overrides), conf_dir=conf_dir)
        return raw, parse_params(raw)
    except ConfigError as e:
        raise ConfigError(f"{GROUP}.overrides: {e}") from None
    except Exception as e:
        raise ConfigError(f"{GROUP}.overrides = {list(cfg.overrides)}: {first_line(e)}") from None


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """The Hydra groups a trial may pick an option of (`model`, `experiment`, ...) and their options."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(conf_dir.iterdir()) if d.is_dir() and d.name != GROUP}


def _check_range(key: str, p: SpaceParam) -> None:
    if p.choices is not None:
        raise ConfigError(f"{key}.choices: only for type categorical (type is {p.type!s})")
    if p.low is None or p.high is None:
        raise ConfigError(f"{key}: type {p.type!s} needs low and high")
    if p.low > p.high:
        raise ConfigError(f"{key}: low = {p.low:g} > high = {p.high:g}")
    if p.log and p.low <= 0:
        raise ConfigError(f"{key}: log = true needs low > 0 (low = {p.low:g})")
    if p.step is not None and (p.step <= 0 or p.log):
        raise ConfigError(f"{key}.step = {p.step:g}: must be > 0, and not combined with log = true")
    if p.type == ParamType.int:
        for name in ("low", "high", "step"):
            if (value := getattr(p, name)) is not None and not float(value).is_integer():
                raise ConfigError(f"{key}.{name} = {value:g}: must be a whole number for type int")


def _check_choices(key: str, p: SpaceParam) -> None:
    extra = [n for n in ("low", "high", "step") if getattr(p, n) is not None] + (["log"] if p.log else [])
    if extra:
        raise ConfigError(f"{key}.{extra[0]}: not used by type categorical (it takes choices)")
    if not p.choices:
        raise ConfigError(f"{key}: type categorical needs a non-empty list of choices")
    if bad := [c for c in p.choices if not isinstance(c, str | int | float | bool | None)]:
        raise ConfigError(f"{key}.choices: {bad[0]!r}: each choice must be a number, string, boolean or null")


def distribution(key: str, p: SpaceParam) -> BaseDistribution:
    """The Optuna distribution of one space entry, or a one-line ConfigError naming `key`."""
    if p.type == ParamType.categorical:
        _check_choices(key, p)
        return CategoricalDistribution(list(p.choices or []))
    _check_range(key, p)
    assert p.low is not None and p.high is not None
    if p.type == ParamType.int:
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)


def candidates(dist: BaseDistribution) -> list[Any]:
    """The values whose validity stands for the whole range: its ends, or every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]  # type: ignore[attr-defined]


def _check_key(key: str, p: SpaceParam, base: DictConfig, groups: dict[str, list[str]]) -> None:
    """The key exists in the composed config (or is a config group) and takes values of the space's type."""
    if key in groups:
        if p.type != ParamType.categorical:
            raise ConfigError(f"{key}: a config group: type must be categorical, its choices among "
                              f"{', '.join(groups[key])}")
        if unknown := [c for c in p.choices or [] if c not in groups[key] and not (key == "experiment" and c is None)]:
            raise ConfigError(f"{key}.choices: {unknown[0]!r}: no conf/{key}/{unknown[0]}.yaml "
                              f"(options: {', '.join(groups[key])})")
        return
    value = OmegaConf.select(base, key, default=KeyError)
    if value is KeyError:
        flat = list(_leaf_keys(base))
        near = difflib.get_close_matches(key, flat, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key}: unknown key: not in the composed config{hint}")
    if isinstance(value, DictConfig):
        raise ConfigError(f"{key}: a section, not a value: search one of its keys, e.g. {key}.{next(iter(value))}")
    if p.type != ParamType.categorical and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}: type {p.type!s} for a {type(value).__name__} value ({value!r}): "
                          "use type categorical")
    if p.type == ParamType.float and isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"{key}: type float for a whole-number key ({value!r}): use type int")


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys


def _check_values(key: str, dist: BaseDistribution, cfg: SearchConfig, base: DictConfig, conf_dir: Path) -> None:
    """Compose a trial's config at each end of the range (each choice) and validate it like a stage would."""
    for value in candidates(dist):
        try:
            if key in config_groups(conf_dir):
                parse_params(compose([*cfg.overrides, f"{key}={override_value(value)}"], conf_dir=conf_dir))
            else:
                trial = base.copy()
                OmegaConf.update(trial, key, value, merge=False)
                parse_params(trial)
        except ConfigError as e:
            raise ConfigError(f"{key}: the value {override_value(value)} fails validation: {e}") from None
        except Exception as e:
            raise ConfigError(f"{key}: the value {override_value(value)} fails validation: {first_line(e)}") from None


def check_space(cfg: SearchConfig, conf_dir: Path = CONF_DIR) -> dict[str, BaseDistribution]:
    """Validate the search space against the composed config; return each key's Optuna distribution.

    One-line `ConfigError`s name the key: a bad range (low > high, log with low <= 0), a key that is not in
    the config composed from conf/ and the fixed overrides, a key also fixed by the overrides, a type that
    does not fit the key's value, a value at an end of the range that the stage schemas reject, or a val
    objective with trials that train on val.
    """
    if not cfg.space:
        raise ConfigError(f"{GROUP}.space: empty: name at least one key to search")
    if cfg.objective_file not in _metrics_files():
        raise ConfigError(f"{GROUP}.metrics_file = {cfg.metrics_file}: must be one of the stages' metrics files "
                          f"({', '.join(map(str, _metrics_files()))})")
    base, params = base_config(cfg, conf_dir)
    if cfg.metric.startswith("val/") and params.train.include_val:
        raise ConfigError(f"{GROUP}.metric = {cfg.metric}: the trials fit on train + val (train.include_val = true) "
                          f"and have no val figure: add train.include_val=false and train.keep_best=true to "
                          f"{GROUP}.overrides")
    groups = config_groups(conf_dir)
    fixed = {o.split("=", 1)[0].lstrip("+~") for o in cfg.overrides}
    distributions = {}
    for key, p in cfg.space.items():
        where = f"{GROUP}.space.{key}"
        if key in fixed:
            raise ConfigError(f"{where}: also fixed in {GROUP}.overrides: drop one of them")
        try:
            distributions[key] = distribution(key, p)
            _check_key(key, p, base, groups)
            _check_values(key, distributions[key], cfg, base, conf_dir)
        except ConfigError as e:
            raise ConfigError(f"{GROUP}.space.{e}") from None
    return distributions


def _metrics_files() -> list[Path]:
    return [path for files in artifacts.STAGE_FILES.values() for path in files.get("metrics", [])]


def trial_overrides(cfg: SearchConfig, params: dict[str, Any]) -> list[str]:
    """The Hydra overrides of one trial: the fixed ones, then each sampled value in override syntax."""
    return [*cfg.overrides, *(f"{key}={override_value(value)}" for key, value in params.items())]


# ---------------------------------------------------------------- one trial
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


# ---------------------------------------------------------------- MLflow: the study's parent run
class ParentRun:
    """The study's run in MLflow: trials nest under it (tag `mlflow.parentRunId`), it charts their values."""

    def __init__(self, params: Params, study: optuna.Study, cfg: SearchConfig) -> None:
        import mlflow

        from pipeline import tracking

        self.experiment_id = tracking.connect(params.mlflow)
        self.uri = tracking.tracking_uri(params.mlflow)
        self.client = mlflow.MlflowClient()
        self.cfg = cfg
        self.run_id = self._reopen(study) or self._create(study)

    def _reopen(self, study: optuna.Study) -> str | None:
        from mlflow.exceptions import MlflowException

        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if not run_id or study.user_attrs.get("mlflow_tracking_uri") != self.uri:
            return None
        try:
            if self.client.get_run(run_id).info.experiment_id != self.experiment_id:
                return None
        except MlflowException:
            return None
        self.client.update_run(run_id, status="RUNNING")
        for key, value in self._process_tags().items():  # else a stage would take it for a dead search's run
            self.client.set_tag(run_id, key, value)
        return run_id

    @staticmethod
    def _process_tags() -> dict[str, str]:
        """The tags by which tracking.mark_stale_runs finds a run whose process is gone (SIGKILL): KILLED."""
        return {"pipeline.pid": str(os.getpid()), "pipeline.host": socket.gethostname()}

    def _create(self, study: optuna.Study) -> str:
        from mlflow.entities import Param

        cfg = self.cfg
        tags = {"pipeline.search.study": cfg.study_name, "pipeline.search.storage": cfg.storage} | self._process_tags()
        run = self.client.create_run(self.experiment_id, run_name=f"search-{cfg.study_name}", tags=tags)
        space = {f"search.space.{k}": json.dumps(dataclasses.asdict(v), default=str)[:500]
                 for k, v in cfg.space.items()}
        params = {"search.direction": str(cfg.direction), "search.metric": cfg.metric,
                  "search.metrics_file": str(cfg.objective_file), "search.seed": str(cfg.seed),
                  "search.overrides": " ".join(cfg.overrides)[:500]} | space
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        study.set_user_attr("mlflow_tracking_uri", self.uri)
        return run.info.run_id

    def adopt(self, child_run_id: str, study: str, number: int) -> None:
        """Nest a trial's pipeline run under this one (what the stages do themselves once tracking reads
        PIPELINE_SEARCH_PARENT_RUN_ID; setting the tag again is harmless)."""
        for key, value in {"mlflow.parentRunId": self.run_id, "pipeline.search.study": study,
                           "pipeline.search.trial": str(number)}.items():
            self.client.set_tag(child_run_id, key, value)

    def log_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = {f"trial/{k}": float(v) for k, v in trial.params.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        if trial.state == TrialState.COMPLETE:
            metrics[f"trial/{self.cfg.metric}"] = float(trial.value)
        tags = {"search.trials": str(len(finished(study))), "mlflow.note.content": summary_markdown(study, self.cfg)}
        if best := best_trial(study):
            metrics[f"best/{self.cfg.metric}"] = float(best.value)
            tags |= {"best.trial": str(best.number), "best.experiment": best.user_attrs.get("experiment", ""),
                     "best.params": json.dumps(best.params)} | {f"best.{k}": str(v) for k, v in best.params.items()}
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, trial.number) for k, v in metrics.items()])
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def end(self, status: str) -> None:
        with contextlib.suppress(Exception):  # ending is best effort: the study itself is in Optuna's storage
            self.client.set_terminated(self.run_id, status)

    def link(self) -> str:
        if self.uri.startswith("http"):
            from pipeline.inference.registry import redact

            return f"{redact(self.uri)}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"run {self.run_id} in {self.uri} (mlflow ui --backend-store-uri {self.uri})"


# ---------------------------------------------------------------- the study
def open_study(cfg: SearchConfig, root: Path) -> optuna.Study:
    """Create the study, or load it to continue; the sampler's seed advances with the trials already run,
    so a resumed search does not replay the first samples."""
    if "://" in cfg.storage:
        storage: Any = cfg.storage
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = root / cfg.storage
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=cfg.study_name, storage=storage, direction=str(cfg.direction),
                                load_if_exists=True)
    if study.direction.name.lower() != cfg.direction:
        raise SearchError(f"error: study {cfg.study_name} in {cfg.storage} was made to "
                          f"{study.direction.name.lower()}, not {cfg.direction}: use another study_name")
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    return study


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count towards n_trials: complete, or failed with an error (not interrupted)."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def fail_orphans(study: optuna.Study) -> None:
    """Trials left RUNNING by a search on this host whose process is gone (killed) -> FAIL, not counted."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") not in (None, host) or (pid and process_alive(int(pid))):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        print(f"[search] trial {t.number} was left running by a search that is gone: marked failed")


    return True


def summary_markdown(study: optuna.Study, cfg: SearchConfig, limit: int = 7000) -> str:
    """The parent run's description: one row per trial, the best first, within a tag's size limit."""
    best = best_trial(study)
    head = f"**Search `{cfg.study_name}`**: {cfg.direction} `{cfg.metric}` over "
    head += ", ".join(f"`{k}`" for k in cfg.space) + f"; fixed: `{' '.join(cfg.overrides) or '-'}`.\n\n"
    if best:
        head += f"Best: trial {best.number} (`{best.user_attrs.get('experiment', '')}`), {best.value:.4f}.\n\n"
    rows = ["| trial | DVC experiment | " + " | ".join(cfg.space) + f" | {cfg.metric} | state |",
            "|---" * (len(cfg.space) + 4) + "|"]
    sign = -1 if cfg.direction == Direction.maximize else 1
    trials = sorted(study.get_trials(deepcopy=False),
                    key=lambda t: (t.value is None, sign * (t.value or 0.0), t.number))
    for i, t in enumerate(trials):
        value = f"{t.value:.4f}" if t.value is not None else t.user_attrs.get("error", "")[:80]
        values = " | ".join(_show(t.params.get(k)) for k in cfg.space)
        row = f"| {t.number} | {t.user_attrs.get('experiment', '')} | {values} | {value} | {t.state.name} |"
        if len(head) + sum(len(r) + 1 for r in rows) + len(row) > limit:
            rows.append(f"\n... and {len(trials) - i} more trials (all in the study: {cfg.storage})")
            break
        rows.append(row)
    return head + "\n".join(rows)


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


@dataclass
class TrialOutcome:
    value: float
    run_id: str | None  # the trial's pipeline run, None when no stage ran (everything restored from cache)


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
        run_id = json.loads(artifacts.run_record("evaluate").read_text())["run_id"]
        run = mlflow.MlflowClient().get_run(run_id)
    except (OSError, KeyError, ValueError, MlflowException):
        return None
    return run_id if run.info.start_time >= started_ms - 1000 else None


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


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    presets = [a for a in argv if "=" not in a]
    if len(presets) > 1:
        raise SearchError(f"error: one preset at most, got {' '.join(presets)} (overrides are key=value)")
    return (presets[0] if presets else "default"), [a for a in argv if "=" in a]


def main() -> None:
    preset, overrides = parse_args(sys.argv[1:])
    cfg = load_search(preset, overrides)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run_search(cfg)
    except KeyboardInterrupt:
        print(f"[search] interrupted: the running trial is marked failed and does not count; "
              f"`python -m pipeline.search {' '.join(sys.argv[1:])}` continues the study", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    cli.run(main, __doc__, "search")

