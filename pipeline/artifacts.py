"""Every file the stages read or write, declared once, and where their runs are tracked.

This is the pipeline's catalog: stage modules take their paths from here instead of from each other, and
`STAGE_FILES` is what `dvc.yaml` must declare (a test holds the two together), so a path changes in one
place. Paths are relative to the project root, where DVC runs every stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.inference.contract import LABELS_FILE

SPLITS = ("train", "val", "test")
PREPARED_DIR = Path("data/prepared")
PREPARED_REPORT = PREPARED_DIR / "report.json"
KERAS_MODEL = Path("models/model.keras")
CHECKPOINTS = Path("models/checkpoints")  # persist: true, keyed by what shapes the weights
TFLITE_DIR = Path("models/tflite")
TFLITE_LABELS = TFLITE_DIR / LABELS_FILE
REGISTERED = Path("models/registered.json")  # name, version, run id of the version quantize registered
RUNS_DIR = Path("runs")  # runs/<stage>.json: the MLflow run each stage logged into
TRAIN_METRICS = Path("metrics/train.json")
BENCHMARK_METRICS = Path("metrics/benchmark.json")
EVALUATE_METRICS = Path("metrics/evaluate.json")
# The stages' metrics files are flat (names from pipeline/metrics.py); what does not fit a column goes here
BENCHMARK_DETAILS = Path("metrics/details/benchmark.json")  # every latency with p90, sizes, the machine
EVALUATE_DETAILS = Path("metrics/details/evaluate.json")  # every model's report and confusion, promotion
TRAIN_HISTORY = Path("plots/train/history.csv")
TRAIN_CURVES = Path("plots/train/curves.png")
LATENCY_CHART = Path("plots/benchmark/latency.png")
CONFUSION_CSV = Path("plots/evaluate/confusion.csv")
CONFUSION_PNG = Path("plots/evaluate/confusion.png")
SAMPLES_PNG = Path("plots/evaluate/samples.png")
TEACHERS_DIR = Path("models/teachers")  # committed distillation teachers (train.distill.teachers: teacher:<name>)
PROMOTION_LOCK = ".promotion.lock"  # under the repo root: serialises promotion across parallel experiments


def split_path(name: str) -> Path:
    return PREPARED_DIR / f"{name}.npz"


def tflite_path(variant: str) -> Path:
    return TFLITE_DIR / f"{variant}.tflite"


def run_record(stage: str) -> Path:
    return RUNS_DIR / f"{stage}.json"


# What each stage writes, by the dvc.yaml section that declares it. Plot data (CSV) are plain outputs that the
# top-level `plots:` of dvc.yaml draws as charts; PNGs are stage plots. So every chart is declared once.
STAGE_FILES: dict[str, dict[str, list[Path]]] = {
    "prepare": {"outs": [*map(split_path, SPLITS), PREPARED_REPORT, run_record("prepare")]},
    "train": {"outs": [KERAS_MODEL, CHECKPOINTS, run_record("train"), TRAIN_HISTORY],
              "metrics": [TRAIN_METRICS], "plots": [TRAIN_CURVES]},
    "quantize": {"outs": [TFLITE_DIR, REGISTERED, run_record("quantize")]},
    "benchmark": {"outs": [run_record("benchmark"), BENCHMARK_DETAILS], "metrics": [BENCHMARK_METRICS],
                  "plots": [LATENCY_CHART]},
    "evaluate": {"outs": [run_record("evaluate"), CONFUSION_CSV, EVALUATE_DETAILS], "metrics": [EVALUATE_METRICS],
                 "plots": [CONFUSION_PNG, SAMPLES_PNG]},
}


def repo_root() -> Path:
    """The real repository, also from inside a queued experiment's temporary copy (DVC sets DVC_ROOT)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///<repo root>/mlflow.db` (artifacts beside it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"
