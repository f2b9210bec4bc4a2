"""What a run and a version say about themselves: restored records of skipped stages, the run's note, the
version's description, and the concise experiments table (real SQLite store, in-process)."""

from __future__ import annotations

import re

import mlflow
import pytest

from pipeline import artifacts, record, tracking
from pipeline.files import write_json
from pipeline.history import write_history
from pipeline.inference.contract import Tag
from pipeline.metrics import HEADLINE, epoch_metrics, exp_show_args

# `store` and `project` (a real SQLite store, a temporary project root) are tests/conftest.py's


def _earlier_execution(registered_version: str) -> str:
    """The files a finished execution leaves: run records, metrics files, curves, details (one run id)."""
    run_id = "0123456789abcdef0123456789abcdef"
    for stage in artifacts.STAGE_FILES:
        write_json(artifacts.run_record(stage), {"run_id": run_id, "experiment_id": "1"})
    write_json(artifacts.TRAIN_METRICS, {"val/accuracy": 0.5, "train/epochs": 2})
    write_json(artifacts.BENCHMARK_METRICS, {"latency/ms_per_face": 0.25, "size/kib": 31.0})
    write_json(artifacts.EVALUATE_METRICS, {"test/accuracy": 0.6, "test/macro_f1": 0.55})
    write_history([{"epoch": 1, "loss": 2.0, "accuracy": 0.3, "val_loss": 2.1, "val_accuracy": 0.35},
                   {"epoch": 2, "loss": 1.5, "accuracy": 0.45, "val_loss": 1.6, "val_accuracy": 0.5}],
                  artifacts.TRAIN_HISTORY)
    write_json(artifacts.REGISTERED, {"name": "fer-expression-synthetic", "version": "3"})
    write_json(artifacts.BENCHMARK_DETAILS, {"registered": {"name": "fer-expression-synthetic",
                                                            "version": registered_version}})
    return run_id


@pytest.mark.parametrize(("benchmark_measured", "expect_latency"), [("3", True), ("2", False)])
def test_a_run_of_evaluate_alone_carries_the_whole_chains_record(project, benchmark_measured: str,
                                                                 expect_latency: bool) -> None:
    source = _earlier_execution(benchmark_measured)
    with tracking.stage_run("evaluate", project) as stage:
        assert not stage.continued  # the quantize record names a run this test's store does not hold
        mlflow.log_metrics({"test/accuracy": 0.61})  # what evaluate itself logs wins over the restored value
    client = mlflow.MlflowClient()
    run = client.get_run(stage.run_id)
    assert run.data.metrics["val/accuracy"] == 0.5 and run.data.metrics["test/accuracy"] == 0.61
    assert [m.value for m in client.get_metric_history(stage.run_id, "epoch/val_accuracy")] == [0.35, 0.5]
    assert run.data.tags["pipeline.restored.train"] == source and "pipeline.restored.evaluate" not in run.data.tags
    # the sibling's latency belongs to this model only if it measured the same registered version
    assert ("latency/ms_per_face" in run.data.metrics) is expect_latency
    assert ("pipeline.restored.benchmark" in run.data.tags) is expect_latency
    note = run.data.tags[record.NOTE]
    assert note.index("| metric | value |") < note.index("Stages:")
    assert f"train (from [run {source[:8]}](#/experiments/1/runs/{source}))" in note
    assert f"get-artifact?path=plots/curves.png&run_uuid={source}" in note  # the plots of the run that made them
    assert f"get-artifact?path=plots/confusion.png&run_uuid={stage.run_id}" in note
    assert "evaluate (done)" in note


def test_the_note_shows_the_headline_values_and_the_config_that_differs(project) -> None:
    with tracking.stage_run("prepare", project) as stage:
        mlflow.log_metrics({"test/accuracy": 0.6604, "latency/ms_per_face": 7.731})
    note = mlflow.MlflowClient().get_run(stage.run_id).data.tags[record.NOTE]
    assert "| test accuracy (registered variant, all views) | 66.04% |" in note
    assert "| ms per face, registered variant, 1 thread | 7.731 |" in note and "| epochs | – |" in note
    assert "none (`dvc repro`)" in note  # the default composition
    assert record.config_diff({"train.lr": "0.001", "train.seed": "42"}, {"train.lr": "0.003", "train.seed": "42"}) \
        == "train.lr=0.001"


def test_a_version_description_says_how_good_fast_big_and_why_champion() -> None:
    tags = {Tag.test_accuracy: "0.6604", Tag.test_macro_f1: "0.645", Tag.latency_ms: "7.7312",
            Tag.machine: "AMD EPYC (AVX2, no AVX-512, 2 cores)", Tag.size_kib: "1119.4", Tag.variant: "int8",
            Tag.promotion: "not promoted", Tag.promotion_reason: "0.6604 <= champion v4's 0.6888",
            Tag.data_source: "fer2013", Tag.protocol: "holdout", Tag.git_commit: "be53efd" * 6}
    text = record.version_description(tags, "#/experiments/1/runs/abc")
    assert "| test accuracy | 66.04% |" in text and "| ms per face, 1 thread | 7.731 on AMD EPYC" in text
    assert "| size | 1,119 KiB (int8) |" in text
    assert "| promotion | not promoted: 0.6604 <= champion v4's 0.6888 |" in text
    assert "[this run](#/experiments/1/runs/abc)" in text
    assert "| test accuracy | – |" in record.version_description({}, "#")  # not yet evaluated: a dash, no crash


def test_the_concise_experiments_table_keeps_the_headline_columns_only() -> None:
    args = exp_show_args()
    keep = re.compile(args[args.index("--keep") + 1])
    columns = [h.name for h in HEADLINE if h.column]
    assert 3 <= len(columns) <= 6 and all(keep.search(c) for c in [*columns, "Experiment"])
    for other in ("Created", "test/recall/angry", "test/accuracy_x", "latency/ms_per_face_all_cores", "train.lr",
                  "test/keras_accuracy", "epoch/val_accuracy"):
        assert not keep.search(other), other


def test_epoch_curves_get_names_that_cannot_pass_for_test_metrics() -> None:
    row = {"epoch": 3, "accuracy": 0.4, "val_accuracy": 0.5, "loss": 1.2, "lr": 1e-3, "train_s": 9.0, "other": 1}
    assert epoch_metrics(row) == {"epoch/train_accuracy": 0.4, "epoch/val_accuracy": 0.5, "epoch/train_loss": 1.2,
                                  "epoch/learning_rate": 1e-3, "epoch/train_seconds": 9.0}
    assert epoch_metrics({}) == {}
