"""The per-epoch training history as CSV (`plots/train/history.csv`, and the checkpoint's copy).

Apart from the TensorFlow code that produces it, because it is read by what must not import TensorFlow: a
resume, and a new MLflow run that restores the curves of a training DVC did not re-run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.files import atomic_path


def read_history(path: Path) -> list[dict[str, float]]:
    """Per-epoch rows of the CSV log; after a resume the last row per epoch wins. Keras' CSVLogger writes
    `NA` in the val columns it adds when there is no val set: those are left out, like empty cells."""
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            epoch = int(row.pop("epoch")) + 1
            rows[epoch] = {"epoch": epoch, **{k: float(v) for k, v in row.items() if v not in ("", "NA", None)}}
    return [rows[k] for k in sorted(rows)]


def write_history(history: list[dict[str, float]], path: Path) -> None:
    keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_s", "train_s",
            "epoch_fraction"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in keys if k in history[0]], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
