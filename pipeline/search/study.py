"""The Optuna study in its storage: opened or continued, which trials count, orphans, the summary table."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.search.preset import Direction, SearchConfig, SearchError
from pipeline.tracking import process_alive


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
