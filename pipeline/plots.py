"""The PNG pictures the stages write: curves, confusion matrix, sample faces, latency chart.

DVC renders the CSV/JSON plot data in `dvc plots show/diff`; these PNGs are the same facts for people who
open a file or look at the MLflow run. Matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.files import atomic_path


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def training_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if key in history[0]:
            ax_loss.plot(epochs, [r[key] for r in history], marker="o", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
        if key in history[0]:
            ax_acc.plot(epochs, [r[key] for r in history], marker="o", label=label)
    ax_loss.set(title="Loss", xlabel="epoch")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised colours, raw counts in the cells, and each true class's recall beside its name.

    The recall is the diagonal of the colours, written out because a rare class (`disgust`) is where a
    model fails first and a shade is hard to read off.
    """
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.8, 5.6))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [f"{c}  {norm[i, i]:.0%}" for i, c in enumerate(classes)])
    ax.set_ylabel("true (recall)")
    ax.set(xlabel="predicted", title=title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    _save(fig, path)


def sample_grid(faces: np.ndarray, true: np.ndarray, pred: np.ndarray, classes: Sequence[str], path: Path,
                title: str) -> None:
    """Test faces with true and predicted labels; wrong predictions in red."""
    n = len(faces)
    cols = min(n, 9)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.25, rows * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, face, t, p in zip(axes.flat, faces, true, pred, strict=False):
        ax.imshow(face, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{classes[t]}\n→ {classes[p]}", fontsize=7, color="black" if t == p else "red")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def latency_chart(rows: Sequence[tuple[str, float, float]], path: Path, title: str) -> None:
    """Horizontal bars of median latency (ms) per model/setting, p90 as an error whisker."""
    labels = [r[0] for r in rows]
    median = np.array([r[1] for r in rows])
    p90 = np.array([r[2] for r in rows])
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y, median, xerr=[np.zeros_like(median), np.maximum(p90 - median, 0)], color="#4c78a8", capsize=3)
    for yi, m in zip(y, median, strict=True):
        ax.text(m, yi, f" {m:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel="ms per face (batch 1), median; whisker to p90", title=title)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
