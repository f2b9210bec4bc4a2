"""Metric names a person reads, the same in MLflow and in DVC's metrics files, and the headline few.

One scheme, `<area>/<what>[_<unit>]`: `test/accuracy`, `test/recall/disgust`, `val/accuracy`,
`latency/ms_per_face`, `size/kib`, `train/minutes`; per-epoch curves live under `epoch/`. Each stage writes
its metrics file as a flat mapping of these names (the nested details go to `metrics/details/`), and logs
exactly that mapping, so `dvc exp show` and `mlflow ui` show one set of columns. The registered variant's
figures carry the plain names (`test/accuracy`, `latency/ms_per_face`); other variants are named by variant.

`HEADLINE` is the short list that the run description, the registered version's tags and description,
the README tables and `make exp-show` use, defined here once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    name: str
    label: str
    fmt: str  # a format spec for the value: ".2%", ".3f", ",.0f"
    column: bool = False  # one of the few in `make exp-show` (which must fit 120 columns)

    def show(self, value: float | None) -> str:
        return "–" if value is None else format(value, self.fmt)


HEADLINE: tuple[Headline, ...] = (
    Headline("test/accuracy", "test accuracy (registered variant, all views)", ".2%", column=True),
    Headline("test/macro_f1", "test macro-F1", ".3f", column=True),
    Headline("test/keras_accuracy", "test accuracy, Keras, one view", ".2%"),
    Headline("baseline/accuracy", "test accuracy, raw-pixel logistic regression", ".2%"),
    Headline("val/accuracy", "val accuracy, Keras, one view", ".2%"),
    Headline("val/exported_accuracy", "val accuracy, registered variant, all views", ".2%"),
    Headline("latency/ms_per_face", "ms per face, registered variant, 1 thread", ".3f", column=True),
    Headline("latency/frame_ms", "ms per 640x480 frame (detect + classify)", ".2f"),
    Headline("size/kib", "registered variant's size, KiB", ",.0f", column=True),
    Headline("train/epochs", "epochs", ".0f"),
    Headline("train/minutes", "training minutes", ".1f", column=True),
)
HEADLINE_NAMES = tuple(h.name for h in HEADLINE)

# Keras's per-epoch log keys -> the curves' names (`accuracy` alone would read as the test accuracy)
EPOCH = {"accuracy": "epoch/train_accuracy", "loss": "epoch/train_loss", "val_accuracy": "epoch/val_accuracy",
         "val_loss": "epoch/val_loss", "learning_rate": "epoch/learning_rate", "lr": "epoch/learning_rate",
         "images_per_s": "epoch/images_per_s", "train_s": "epoch/train_seconds"}


def epoch_metrics(row: Mapping[str, float]) -> dict[str, float]:
    """One epoch's logs under the curve names; keys Keras adds that we do not chart are left out."""
    return {EPOCH[k]: float(v) for k, v in row.items() if k in EPOCH}


def recall(cls: str) -> str:
    return f"test/recall/{cls}"


def numeric(metrics: Mapping[str, object]) -> dict[str, float]:
    """The entries MLflow can store as metrics (numbers; booleans and strings become tags elsewhere)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def headline_table(values: Mapping[str, float]) -> str:
    """The headline metrics as a two-column Markdown table (missing ones shown as a dash)."""
    rows = [f"| {h.label} | {h.show(values.get(h.name))} |" for h in HEADLINE]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def exp_show_args() -> list[str]:
    """`dvc exp show` options for the headline columns only, beside the experiment names."""
    keep = "|".join(["Experiment", *(re.escape(h.name) + "$" for h in HEADLINE if h.column)])
    return ["--no-pager", "--drop", ".*", "--keep", f"^({keep})", "--precision", "4"]


def main() -> None:
    """`python -m pipeline.metrics [dvc exp show options]` (`make exp-show`): the concise experiments table."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(main.__doc__)
        return
    env = {"COLUMNS": "120"} | dict(os.environ)
    raise SystemExit(subprocess.call(["dvc", "exp", "show", *exp_show_args(), *sys.argv[1:]], env=env))


if __name__ == "__main__":
    main()
