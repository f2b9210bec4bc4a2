"""benchmarks/teachers.py: the ensemble figures it reports are the averaged scores' accuracy, every subset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO, load_benchmark


def test_each_subset_averages_its_teachers_scores_and_the_best_of_each_size_is_reported() -> None:
    teachers = load_benchmark("teachers")
    y = np.array([0, 1, 2, 0])
    eye = np.eye(7)
    scores = {  # a is right on faces 0 and 2, b on 1 and 3, each surer where it is right: averaged, all four
        "a": np.stack([eye[0], 0.6 * eye[3] + 0.4 * eye[1], 0.6 * eye[2] + 0.4 * eye[3],
                       0.45 * eye[0] + 0.55 * eye[5]]),
        "b": np.stack([0.4 * eye[0] + 0.6 * eye[4], eye[1], 0.45 * eye[2] + 0.55 * eye[3], eye[0]]),
        "c": np.stack([0.9 * eye[5] + 0.1 * eye[6]] * 4),  # never right
    }
    rows = teachers.ensembles(scores, y)
    assert [len(r["teachers"]) for r in rows] == [2, 2, 2, 3]
    assert rows[0] == {"teachers": ["a", "b"], "accuracy": 1.0}  # best first within a size
    assert rows[-1] == {"teachers": ["a", "b", "c"], "accuracy": 0.75}
    payload, text = teachers.report(scores, y, Path("/somewhere/val.npz"), "f" * 64)
    assert payload["teachers"] == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert payload["best_by_size"]["2"]["teachers"] == ["a", "b"] and payload["split"] == "val.npz"
    assert "| 2 | `a`, `b` | 100.00% |" in text and "/somewhere" not in text


def test_fewer_than_two_teachers_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "benchmarks/teachers.py", "--teachers-dir", str(tmp_path),
                             "teacher:only-one", "--split", str(tmp_path / "val.npz")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: 1 teacher(s) (teacher:only-one): an ensemble needs two"
