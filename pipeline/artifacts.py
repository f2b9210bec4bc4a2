"""Every file the stages read or write, declared once, and where their runs are tracked.

This is the pipeline's catalog: stage modules take their paths from here instead of from each other, and
`STAGES` says once what each stage reads and writes. The stage graph (whose run a stage continues, whose
records a new run restores) derives from it, and `dvc.yaml` is its one mirror (tests/test_artifacts.py holds
the two together). Paths are relative to the project root, where DVC runs every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.inference.contract import LABELS_FILE

SPLITS = ("train", "val", "test")
PREPARED_DIR = Path("data/prepared")
PREPARED_REPORT = PREPARED_DIR / "report.json"
KERAS_MODEL = Path("models/model.keras")
CHECKPOINTS = Path("models/checkpoints")  # persist: true, keyed by what shapes the weights
FITTED_TEACHERS = CHECKPOINTS / "teachers"  # train.distill.fit's teachers, keyed by what shapes them; kept after a run
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


@dataclass(frozen=True)
class Stage:
    """One stage's files, by the dvc.yaml section that declares them: the outputs of other stages it reads
    (`deps`), and what it writes (`outs`, `metrics`, `plots`). Plot data (CSV) are plain outputs that the
    top-level `plots:` of dvc.yaml draws as charts; PNGs are stage plots, so every chart is declared once.
    `details` is the output that names the registered version the stage measured (for a sibling's record)."""

    reads: tuple[Path, ...] = ()
    outs: tuple[Path, ...] = ()
    metrics: tuple[Path, ...] = ()
    plots: tuple[Path, ...] = ()
    details: Path | None = None


_PREPARED = (*map(split_path, SPLITS), PREPARED_REPORT)
# The catalog, in execution order: every edge of the stage graph follows from the files, so it is written once.
STAGES: dict[str, Stage] = {
    "prepare": Stage(outs=(*_PREPARED, run_record("prepare"))),
    "train": Stage(reads=(split_path("train"), split_path("val"), PREPARED_REPORT),
                   outs=(KERAS_MODEL, CHECKPOINTS, run_record("train"), TRAIN_HISTORY),
                   metrics=(TRAIN_METRICS,), plots=(TRAIN_CURVES,)),
    "quantize": Stage(reads=(KERAS_MODEL, split_path("train"), split_path("test"), PREPARED_REPORT),
                      outs=(TFLITE_DIR, REGISTERED, run_record("quantize"))),
    "benchmark": Stage(reads=(KERAS_MODEL, TFLITE_DIR, REGISTERED),
                       outs=(run_record("benchmark"), BENCHMARK_DETAILS), metrics=(BENCHMARK_METRICS,),
                       plots=(LATENCY_CHART,), details=BENCHMARK_DETAILS),
    "evaluate": Stage(reads=(KERAS_MODEL, TFLITE_DIR, REGISTERED, *_PREPARED),
                      outs=(run_record("evaluate"), CONFUSION_CSV, EVALUATE_DETAILS), metrics=(EVALUATE_METRICS,),
                      plots=(CONFUSION_PNG, SAMPLES_PNG), details=EVALUATE_DETAILS),
}


def writes(stage: str) -> tuple[Path, ...]:
    s = STAGES[stage]
    return s.outs + s.metrics + s.plots


def direct_upstream(stage: str) -> tuple[str, ...]:
    """The stages whose outputs `stage` reads, in execution order."""
    reads = set(STAGES[stage].reads)
    return tuple(s for s in STAGES if s != stage and reads & set(writes(s)))


def upstream(stage: str) -> tuple[str, ...]:
    """Every stage `stage` depends on, directly or not, in execution order: the records a new run restores."""
    found = set(direct_upstream(stage))
    for s in direct_upstream(stage):
        found |= set(upstream(s))
    return tuple(s for s in STAGES if s in found)


def continues(stage: str) -> str | None:
    """The stage whose MLflow run this one continues: the last one it reads from (None for the first)."""
    direct = direct_upstream(stage)
    return direct[-1] if direct else None


def siblings(stage: str) -> tuple[str, ...]:
    """Stages with the same upstream that neither feeds the other (benchmark and evaluate): either may run
    alone, so a new run takes the other's record only if it measured the same registered version."""
    return tuple(s for s in STAGES if s != stage and STAGES[s].details and upstream(s) == upstream(stage))


def metrics_files() -> list[Path]:
    return [path for stage in STAGES.values() for path in stage.metrics]


# The same catalog by dvc.yaml section (what tests/test_artifacts.py holds dvc.yaml to)
STAGE_FILES: dict[str, dict[str, list[Path]]] = {
    name: {k: list(v) for k, v in (("outs", s.outs), ("metrics", s.metrics), ("plots", s.plots)) if v}
    for name, s in STAGES.items()}
