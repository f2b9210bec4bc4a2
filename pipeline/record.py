"""What a run and a registered version say about themselves in MLflow: complete, described, linked.

A run is one model's complete record even when DVC re-ran only part of the chain: a new run copies the
metrics of every stage it did not run from that stage's recorded outputs (metrics files, the prepared
report, the training curves), tags each such stage `pipeline.restored.<stage>` with the run that produced
it, and so compares with any other run on the same columns. Its Markdown note (what the run page shows
first) holds the headline table, the config that differs from `conf/`'s defaults and the plots. A
registered version's description is rebuilt from its tags by whichever stage adds some.

Nothing here shapes a DVC output: it reads the stages' files and writes only to MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
from mlflow.exceptions import MlflowException

from pipeline import artifacts
from pipeline.history import read_history
from pipeline.inference.contract import Tag
from pipeline.metrics import epoch_metrics, headline_table, numeric
from pipeline.splits import PreparedReport, read_report

NOTE = "mlflow.note.content"  # the run's description in `mlflow ui`


def ui_base(tracking_uri: str) -> str:
    """Where a browser reaches the store: the server itself, or `mlflow ui`'s default address."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"


def runs_table_link(base: str, experiment_id: str) -> str:
    """The runs table in the training view: without `workflowType`, MLflow 3 opens on its GenAI overview
    (the browser remembers the last view; the experiment's kind tag alone does not decide it)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def model_link(base: str, name: str, version: str | None = None) -> str:
    return f"{base}/#/models/{quote(name)}" + (f"/versions/{version}" if version else "")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _still_current(stage: str) -> bool:
    """A sibling's record belongs to this model only if it measured the version quantize registered."""
    registered = _read_json(artifacts.REGISTERED)
    measured = _read_json(artifacts.STAGES[stage].details).get("registered", {})
    return bool(registered) and measured.get("version") == registered.get("version") \
        and measured.get("name") == registered.get("name")


def restore_skipped_stages(current: str) -> list[str]:
    """Log, into the active (new) run, the recorded results of the stages DVC did not re-run for it.

    Those are the stages upstream of `current` and a sibling that measured the same registered version;
    each keeps a link (`pipeline.restored.<stage>`) to the run that made its outputs.
    """
    candidates = [*artifacts.upstream(current), *(s for s in artifacts.siblings(current) if _still_current(s))]
    restored = []
    for stage in candidates:
        source = _read_json(artifacts.run_record(stage)).get("run_id")
        if not source:
            continue
        values: dict[str, float] = {}
        for path in artifacts.STAGES[stage].metrics:
            values |= numeric(_read_json(path))
        if stage == "prepare" and artifacts.PREPARED_REPORT.exists():
            report = read_report()
            log_prepared(report)
            values |= prepared_metrics(report)
        if stage == "train":
            _restore_curves()
        if values:
            mlflow.log_metrics(values)
        mlflow.set_tag(f"pipeline.restored.{stage}", source)
        restored.append(stage)
    if restored:
        print(f"[{current}] restored the records of {', '.join(restored)} (DVC did not re-run them)")
    return restored


def _restore_curves() -> None:
    for row in read_history(artifacts.TRAIN_HISTORY):
        mlflow.log_metrics(epoch_metrics(row), step=int(row["epoch"]))


def log_input(dataset: Any, context: str, tags: dict[str, str], attempts: int = 4) -> None:
    """`mlflow.log_input`, retried when a parallel run inserted the same dataset first.

    The tracking store looks the dataset up and then inserts it; two experiments that start together
    (`dvc queue start -j 2`) both find nothing and the slower insert fails on the store's unique key
    (`IntegrityError`). The row exists by then, so the retry links it to this run.
    """
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except MlflowException as e:
            message = str(e).lower()
            if attempt == attempts - 1 or ("integrityerror" not in message and "unique" not in message):
                raise
            time.sleep(0.2 * (attempt + 1))


def log_prepared(report: PreparedReport) -> None:
    """Record the splits with MLflow dataset tracking (digest, source, size), so runs say what data they saw."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    for name in artifacts.SPLITS:
        dataset = MetaDataset(source=LocalArtifactDatasetSource(str(artifacts.split_path(name))),
                              name=f"{report.source}-{name}", digest=report.digests[name][:36])
        log_input(dataset, context=name, tags={"rows": str(report.total(name)), "protocol": report.protocol,
                                               "path": report.path})
    mlflow.log_metrics(prepared_metrics(report))
    mlflow.set_tag("data.protocol", report.protocol)  # the rule applied; the param may say `auto`
    mlflow.log_dict(dataclasses.asdict(report), "prepare/report.json")


def prepared_metrics(report: PreparedReport) -> dict[str, float]:
    """Faces per split and how many were skipped: prepare's metrics (it has no metrics file of its own)."""
    return {f"data/{name}_faces": report.total(name) for name in artifacts.SPLITS} | {
        "data/skipped_files": int(report.skipped.get("count", 0))}


def config_diff(flat: dict[str, str], defaults: dict[str, str]) -> str:
    """`key=value` for every param that differs from the defaults (or that the defaults lack)."""
    return " ".join(f"{k}={v}" for k, v in flat.items() if defaults.get(k) != v)


def run_note(run: mlflow.entities.Run) -> str:
    """The run's Markdown description: headline table, what differs from the defaults, stages, plots.

    Links are relative to the page, so they work on whichever address the UI is served.
    """
    tags, run_id = run.data.tags, run.info.run_id
    exp = run.info.experiment_id
    lines = [f"**{tags.get('dvc.exp_name') or run.info.run_name}** at commit "
             f"`{tags.get('mlflow.source.git.commit', 'unknown')[:12]}`"
             + (" (with uncommitted changes)" if tags.get("git.dirty") == "true" else ""), "",
             headline_table(run.data.metrics), "",
             "Config that differs from conf/'s defaults: "
             + (f"`{tags['pipeline.config_diff']}`" if tags.get("pipeline.config_diff") else "none (`dvc repro`)"),
             "", "Stages: " + ", ".join(_stage_state(stage, tags, exp) for stage in artifacts.STAGES)]
    images = []
    for stage, pngs in ((name, s.plots) for name, s in artifacts.STAGES.items()):
        source = tags.get(f"pipeline.restored.{stage}", run_id)
        images += [f"![{png.stem}](get-artifact?path=plots/{png.name}&run_uuid={source})"
                   for png in pngs]
    return "\n".join([*lines, "", " ".join(images)])


def stage_recorded(stage: str, tags: dict[str, str]) -> bool:
    """The run holds the stage's record: it ran the stage, or copied the record of the run DVC's cache came from."""
    return tags.get(f"pipeline.stage.{stage}") == "done" or f"pipeline.restored.{stage}" in tags


def fitted_on_val(params: dict[str, str]) -> bool:
    """A run whose val faces were training data (`train.include_val`): its val figure is not held out."""
    return params.get("train.include_val", "").lower() == "true"


def _stage_state(stage: str, tags: dict[str, str], experiment_id: str) -> str:
    if source := tags.get(f"pipeline.restored.{stage}"):
        return f"{stage} (from [run {source[:8]}](#/experiments/{experiment_id}/runs/{source}))"
    return f"{stage} ({tags.get(f'pipeline.stage.{stage}', 'not run')})"


def describe_run(run_id: str) -> None:
    client = mlflow.MlflowClient()
    client.set_tag(run_id, NOTE, run_note(client.get_run(run_id)))


def version_description(tags: dict[str, str], run_link: str) -> str:
    """A version's description from its tags: what it scores, how fast and big it is, why it is champion."""
    def tag(key: Tag, fmt: str = "{}") -> str:
        value = tags.get(key)
        if value is None:
            return "–"
        with contextlib.suppress(ValueError):
            return fmt.format(float(value))
        return value

    rows = [("test accuracy", tag(Tag.test_accuracy, "{:.2%}")), ("test macro-F1", tag(Tag.test_macro_f1, "{:.3f}")),
            ("ms per face, 1 thread", f"{tag(Tag.latency_ms, '{:.3f}')} on {tags.get(Tag.machine, '–')}"),
            ("size", f"{tag(Tag.size_kib, '{:,.0f}')} KiB ({tags.get(Tag.variant, '?')})"),
            ("promotion", f"{tag(Tag.promotion)}: {tags.get(Tag.promotion_reason, 'not evaluated yet')}"),
            ("data", f"{tags.get(Tag.data_source, '?')}, {tags.get(Tag.protocol, '?')} protocol")]
    return ("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
            + f"\n\nMade by [this run]({run_link}) at commit `{tags.get(Tag.git_commit, 'unknown')[:12]}`.")


def describe_version(name: str, version: str) -> None:
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(name, version)
        run = client.get_run(mv.tags.get(Tag.run_id) or mv.run_id)
    except MlflowException:
        return
    link = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    client.update_model_version(name, version, version_description(mv.tags, link))

