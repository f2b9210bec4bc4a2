"""The study's parent run in MLflow: trials nest under it, it charts their values and names the best."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline import tracking
from pipeline.config import Params
from pipeline.search.preset import SearchConfig
from pipeline.search.study import best_trial, finished, summary_markdown


class ParentRun:
    """The study's run in MLflow: trials nest under it (tag `mlflow.parentRunId`), it charts their values."""

    def __init__(self, params: Params, study: optuna.Study, cfg: SearchConfig) -> None:
        import mlflow

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
        for key, value in tracking.process_tags().items():  # else a stage would take it for a dead search's run
            self.client.set_tag(run_id, key, value)
        return run_id

    def _create(self, study: optuna.Study) -> str:
        from mlflow.entities import Param

        cfg = self.cfg
        tags = {"pipeline.search.study": cfg.study_name, "pipeline.search.storage": cfg.storage}
        tags |= tracking.process_tags()  # a search killed meanwhile: the next stage marks its run KILLED
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
