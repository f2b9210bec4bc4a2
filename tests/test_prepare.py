"""The prepare stage's core, in-process: the splits and the typed report it returns, read back as later stages
read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.files import sha256_arrays
from pipeline.inference.contract import CLASSES
from pipeline.prepare import prepare
from pipeline.splits import load_split, read_report, save_split, write_report
from tests.conftest import params


def test_synthetic_splits_and_report_agree(tmp_path: Path) -> None:
    cfg = params("data.n_train=140", "data.n_test=70").data
    arrays, report = prepare(cfg)
    assert {k: len(v[1]) for k, v in arrays.items()} == {"train": 126, "val": 14, "test": 70}
    assert report.protocol == "holdout" and report.classes == list(CLASSES)
    for name, (x, y) in arrays.items():
        assert x.shape[1:] == (48, 48) and x.dtype == np.uint8
        assert report.digests[name] == sha256_arrays(x, y) and report.total(name) == len(y)
        assert sum(report.counts[name][c] for c in CLASSES) == len(y)
    path = tmp_path / "report.json"
    write_report(report, path)
    assert read_report(path) == report


def test_splits_round_trip_byte_for_byte(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    y = np.arange(5, dtype=np.uint8)
    save_split(tmp_path / "a.npz", x, y)
    save_split(tmp_path / "b.npz", x, y)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    x2, y2 = load_split(tmp_path / "a.npz")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


@pytest.mark.parametrize(("content", "message"), [(None, "not found"), (b"{not json", "not a prepare report"),
                                                  (b'{"source": "x"}', "not a prepare report")])
def test_a_missing_or_foreign_report_is_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=f"^error: {path}: {message}"):
        read_report(path)


def test_a_file_that_is_not_a_split_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"PK not really")
    with pytest.raises(SystemExit, match=r"x.npz: not a prepared split"):
        load_split(tmp_path / "x.npz")
