"""The prepared data as every later stage sees it: three splits of 48x48 faces and a typed report.

`prepare` writes them; `train`, `quantize` and `evaluate` read them through `load_split` and `read_report`,
which fail with one line naming the file, so a stage never digs through a raw dict or a half-read array.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import PREPARED_REPORT, split_path
from pipeline.files import atomic_path, write_json


@dataclass
class PreparedReport:
    """What `prepare` made: which source, which split rule, how many faces of each class, what was skipped.

    `digests` name each split's contents (sha256 of the arrays): the registry and promotion use the test
    digest to know which versions are comparable, and the checkpoint key uses all three.
    """

    source: str
    path: str
    protocol: str  # the rule actually applied: official or holdout (never `auto`)
    mapping: dict[str, str]  # split -> where its faces came from
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> faces, plus "total"
    digests: dict[str, str]
    skipped: dict = field(default_factory=lambda: {"count": 0, "files": []})
    warnings: list[str] = field(default_factory=list)

    def total(self, split: str) -> int:
        return int(self.counts[split]["total"])


def write_report(report: PreparedReport, path: Path = PREPARED_REPORT) -> None:
    write_json(path, asdict(report))


def read_report(path: Path = PREPARED_REPORT) -> PreparedReport:
    try:
        raw = json.loads(Path(path).read_text())
        return PreparedReport(**raw)
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: not found (run `dvc repro prepare` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise SystemExit(f"error: {path}: not a prepare report ({str(e).splitlines()[0]})") from None


def save_split(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """One split as a compressed npz (`x` uint8 [N,48,48], `y` uint8 [N]); byte-identical for equal arrays."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, x=x.astype(np.uint8), y=y.astype(np.uint8))


def load_split(path_or_name: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A split by name ("train") or path, with a one-line error that names the file."""
    path = split_path(path_or_name) if path_or_name in ("train", "val", "test") else Path(path_or_name)
    try:
        with np.load(path) as data:
            return data["x"], data["y"]
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: not found (run `dvc repro prepare` first)") from None
    except (KeyError, ValueError, OSError) as e:
        raise SystemExit(f"error: {path}: not a prepared split ({e})") from None
