"""What a model made by the pipeline promises to whoever runs it, and how the registry names and tags it.

One definition of each: the class order, the input size, the file names inside a registered model, the
tags the `quantize` and `evaluate` stages write on a registered version and that promotion, the runner
and `lineage` read back, the registered-model name and the `models:/` URI forms. A renamed tag is then
one edit here instead of a silent mismatch (a promotion reading a champion's accuracy as missing would
hand the alias to anything). Standard library only: every other module may import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# Canonical class order of every array, model output, labels file and report (alphabetical).
CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
IMAGE_SIZE = 48  # models take raw gray pixels [1, 48, 48, 1]; normalisation is inside the graph
MODEL_FILE = "model.tflite"  # names inside a registered model's artifacts and the bundled release
LABELS_FILE = "labels.json"
CHAMPION = "champion"  # the alias promotion moves and the runner follows
# Each side of a detected face box is widened by this share before the 48x48 crop, so that the crop frames a face
# as FER2013 does (chosen on validation faces by benchmarks/framing.py; reports/framing.md).
FRAMING_MARGIN = 0.05
MIN_FACE = 32  # pixels: narrower detector boxes are skipped by default (mostly false detections, or too blurred)
OPENCV_MISSING = ("OpenCV is not installed: pip install 'fer-pipeline[headless]' (no window) or "
                  "'fer-pipeline[gui]' (a preview window), one of the two: OpenCV's wheels must not be mixed")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})


class Family(StrEnum):
    """The data a model was trained on; part of its registered name, so families never compete."""

    synthetic = "synthetic"
    fer2013 = "fer2013"


class Tag(StrEnum):
    """Tags on a registered model version."""

    run_id = "run_id"
    variant = "variant"
    tflite_sha256 = "tflite_sha256"  # checked after every download
    data_source = "data_source"
    data_path = "data_path"
    protocol = "protocol"
    train_digest = "train_digest"
    test_digest = "test_digest"  # promotion compares only versions scored on the same test split
    git_commit = "git_commit"
    git_dirty = "git_dirty"
    dvc_data_md5 = "dvc_data_md5"
    test_accuracy = "test_accuracy"
    test_macro_f1 = "test_macro_f1"
    latency_ms = "latency_ms_per_face"  # the benchmark's, 1 thread, on `benchmark_machine`
    size_kib = "size_kib"
    machine = "benchmark_machine"
    promotion = "promotion"  # what evaluate decided: promoted to champion, or not
    promotion_reason = "promotion_reason"
    # the bundled release model on this version's test split, scored by evaluate: what the version had to beat
    release_model = "release_model"
    release_test_accuracy = "release_test_accuracy"
    release_test_macro_f1 = "release_test_macro_f1"


def metric_tag(metric: str) -> Tag:
    """The version tag that holds a promotion metric (`evaluate.promote_metric`): accuracy -> test_accuracy."""
    return Tag(f"test_{metric}")


def release_metric_tag(metric: str) -> Tag:
    """The version tag that holds the release model's score on the version's test split: accuracy ->
    release_test_accuracy."""
    return Tag(f"release_test_{metric}")


def registered_name(prefix: str, family: Family | str) -> str:
    """`<prefix>-<family>`, e.g. `fer-expression-fer2013`."""
    return f"{prefix}-{Family(family)}"


def default_model_uri(prefix: str = "fer-expression", family: Family = Family.fer2013) -> str:
    return f"models:/{registered_name(prefix, family)}@{CHAMPION}"


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/<name>@<alias>` or `models:/<name>/<version>`."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def is_model_uri(text: str) -> bool:
    return text.startswith("models:/")


def parse_model_uri(uri: str) -> ModelRef:
    """`models:/name@alias` or `models:/name/version`; ValueError naming the URI otherwise."""
    if not is_model_uri(uri):
        raise ValueError(f"{uri}: not a models:/ URI")
    body = uri.removeprefix("models:/")
    name, at, alias = body.partition("@")
    if at:
        if not name or not alias or "/" in name:
            raise ValueError(f"{uri}: expected models:/<name>@<alias>")
        return ModelRef(name, alias=alias)
    name, slash, version = body.partition("/")
    if not slash or not name or not version.isdigit():
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return ModelRef(name, version=version)


def repo_root() -> Path:
    """The real repository, also from inside a queued experiment's temporary copy (DVC sets DVC_ROOT)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded store `sqlite:///<repo root>/mlflow.db` (artifacts beside it):
    where the stages log and, by the same rule, where the runner looks for a champion."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"
