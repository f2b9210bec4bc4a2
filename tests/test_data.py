"""Reading the FER2013 layouts and CSV, the split protocol, conversion, skips and clear errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import FileDataConfig, Protocol, Source
from pipeline.data import (
    CSV_TO_CANONICAL,
    DataError,
    assign_splits,
    read_csv,
    read_folder_layout,
    read_labelled,
    read_source,
)
from pipeline.inference.contract import CLASSES


def cfg(path: Path, source: Source = Source.fer2013, protocol: Protocol = Protocol.auto,
        max_skipped: float = 0.5) -> FileDataConfig:
    return FileDataConfig(source=source, path=str(path), protocol=protocol, val_fraction=0.2, seed=0,
                          max_skipped_fraction=max_skipped, min_side=24, max_side=1024, max_aspect=2.0)


def face(value: int, shape: tuple[int, ...] = (48, 48)) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_layout(root: Path, per_class: int = 5, private: bool = False) -> Path:
    """A Kaggle-style folder: train/<class>/Training_*.jpg, test/<class>/PublicTest_*.jpg (+ PrivateTest_)."""
    n = 0
    for split, usages in (("train", ["Training"]), ("test", ["PublicTest"] + (["PrivateTest"] if private else []))):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for usage in usages:
                for _ in range(per_class):
                    cv2.imwrite(str(root / split / c / f"{usage}_{n}.jpg"), face(n))
                    n += 1
    return root


def zip_dir(src: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, prefix + p.relative_to(src).as_posix())
    return dest


def test_folder_layout_holdout_protocol(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer")
    splits, _collected = read_source(cfg(root))
    assert splits.protocol == "holdout"
    assert splits.mapping["test"] == "PublicTest"
    sizes = {k: len(v[1]) for k, v in splits.arrays.items()}
    assert sizes == {"train": 28, "val": 7, "test": 35}
    # stratified: every class once in val
    assert sorted(splits.arrays["val"][1].tolist()) == list(range(7))
    x, y = splits.arrays["test"]
    assert x.dtype == np.uint8 and x.shape[1:] == (48, 48) and y.dtype == np.uint8


def test_official_protocol_when_private_test_present(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", private=True)
    splits, _ = read_source(cfg(root))
    assert splits.protocol == "official"
    assert splits.mapping == {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    assert {k: len(v[1]) for k, v in splits.arrays.items()} == {"train": 35, "val": 35, "test": 35}
    holdout, _ = read_source(cfg(root, protocol=Protocol.holdout))
    assert holdout.protocol == "holdout" and "unused" in holdout.mapping


def test_official_protocol_without_private_test_is_an_error(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer")
    with pytest.raises(DataError, match=r"protocol=official needs .*PrivateTest"):
        read_source(cfg(root, protocol=Protocol.official))


def test_zip_with_top_folder_reads_like_the_folder(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer")
    archive = zip_dir(root, tmp_path / "fer.zip", prefix="fer2013/")
    a, _ = read_source(cfg(root))
    b, _ = read_source(cfg(archive))
    for split in ("train", "val", "test"):
        assert np.array_equal(a.arrays[split][0], b.arrays[split][0])
        assert np.array_equal(a.arrays[split][1], b.arrays[split][1])


def _damage(archive: Path, how: str) -> Path:
    """A zip as a user gets it after a download or copy went wrong."""
    data = archive.read_bytes()
    if how == "truncated":
        archive.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        archive.write_bytes(b"")
    elif how == "central directory overwritten":
        archive.write_bytes(data[: len(data) - 200] + bytes(200))
    else:  # one member's compressed bytes overwritten: the central directory is whole
        with zipfile.ZipFile(archive) as z:
            info = z.infolist()[-1]
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        archive.write_bytes(data[:start] + bytes(info.compress_size) + data[start + info.compress_size:])
    return archive


@pytest.mark.parametrize("how", ["truncated", "emptied", "central directory overwritten", "member overwritten"])
def test_a_damaged_zip_says_so_in_one_line_naming_it(tmp_path: Path, how: str) -> None:
    archive, root = tmp_path / "fer.zip", make_layout(tmp_path / "fer", per_class=1)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:  # compressed, as Kaggle's is
        for p in sorted(root.rglob("*")):
            z.write(p, p.relative_to(root).as_posix())
    _damage(archive, how)
    with pytest.raises(DataError) as err:
        read_source(cfg(archive))
    message = str(err.value)
    assert message.startswith(f"{archive}: a damaged .zip (") and "\n" not in message
    assert message.endswith("copy or download it again") and "neither a folder" not in message


def test_a_damaged_zip_given_as_the_csv_is_named_a_damaged_zip(tmp_path: Path) -> None:
    archive = _damage(zip_dir(make_layout(tmp_path / "fer", per_class=1), tmp_path / "fer.zip"), "truncated")
    with pytest.raises(DataError, match=r"fer\.zip: a damaged \.zip \(zipfile\.BadZipFile: "):
        read_csv(archive)


def test_a_file_that_is_no_zip_at_all_is_still_neither(tmp_path: Path) -> None:
    path = tmp_path / "faces.tar"
    path.write_bytes(b"not an archive" * 100)
    with pytest.raises(DataError, match=r"faces\.tar: neither a folder nor a \.zip of the FER2013 layout"):
        read_source(cfg(path))


def test_colour_png_and_other_sizes_are_converted(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=2)
    cv2.imwrite(str(root / "train" / "happy" / "big.png"), face(1, (64, 64, 3)))
    cv2.imwrite(str(root / "train" / "sad" / "small.jpg"), face(2, (30, 30)))
    data = read_folder_layout(root)
    assert len(data.images) == 7 * 4 + 2 and not data.skipped
    assert all(im.shape == (48, 48) and im.dtype == np.uint8 for im in data.images)


def test_unreadable_files_are_skipped_and_listed(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=3)
    (root / "train" / "angry" / "empty.jpg").write_bytes(b"")
    good = (root / "train" / "angry" / "Training_0.jpg").read_bytes()
    (root / "train" / "fear" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "happy" / "notes.txt").write_text("not a face")
    (root / "test" / "sad" / "garbage.png").write_bytes(b"\x89PNG garbage")
    data = read_folder_layout(root)
    skipped = {Path(s["file"]).name: s["reason"] for s in data.skipped}
    assert skipped == {"empty.jpg": "empty file", "truncated.jpg": "truncated JPEG (no end-of-image marker)",
                       "notes.txt": "not an image file", "garbage.png": "not a readable image"}
    assert len(data.images) == 7 * 6


def test_too_many_skipped_is_an_error_naming_the_first(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=1)
    (root / "train" / "angry" / "bad.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"1 of 15 files unreadable .*max_skipped_fraction=0.0.*bad.jpg"):
        read_source(cfg(root, max_skipped=0.0))


def test_unknown_class_folder_is_an_error(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=1)
    (root / "train" / "contempt").mkdir()
    cv2.imwrite(str(root / "train" / "contempt" / "x.jpg"), face(0))
    with pytest.raises(DataError, match=r"unknown class folder 'train/contempt' \(expected one of: angry"):
        read_folder_layout(root)


def test_empty_class_is_reported_not_fatal(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=2)
    shutil.rmtree(root / "train" / "disgust")
    (root / "train" / "disgust").mkdir()
    data = read_folder_layout(root)
    assert data.empty_classes == ["train/disgust"]


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=2)
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match="the test split is empty"):
        read_source(cfg(root))
    with pytest.raises(DataError, match="not found"):
        read_source(cfg(tmp_path / "nowhere"))


def write_csv(path: Path, rows: list[tuple[object, str, str]], header: str = "emotion,pixels,Usage") -> Path:
    path.write_text(header + "\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    return path


def test_images_that_cannot_be_face_crops_are_skipped_with_their_reason(tmp_path: Path) -> None:
    """A 1x1 JPEG, a 4000x4000 noise image and a 300x40 strip: reported in `skipped`, never a training face."""
    root = make_layout(tmp_path / "fer", per_class=3)
    cv2.imwrite(str(root / "train" / "angry" / "dot.jpg"), face(1, (1, 1)))
    cv2.imwrite(str(root / "train" / "happy" / "huge.jpg"), face(2, (4000, 4000)))
    cv2.imwrite(str(root / "train" / "sad" / "strip.png"), face(3, (40, 300)))
    cv2.imwrite(str(root / "train" / "sad" / "fine.png"), face(4, (30, 50)))  # small but face-shaped: kept
    splits, collected = read_source(cfg(root))
    reasons = {Path(s["file"]).name: s["reason"] for s in collected.skipped}
    assert reasons == {"dot.jpg": "too small (1x1 < data.min_side 24)",
                       "huge.jpg": "too large (4000x4000 > data.max_side 1024)",
                       "strip.png": "not face-shaped (300x40: aspect > data.max_aspect 2)"}
    assert sum(len(y) for _, y in splits.arrays.values()) == 7 * 6 + 1


def pixels(v: int) -> str:
    return " ".join(str((v + i) % 256) for i in range(48 * 48))


def test_csv_maps_labels_to_canonical_order(tmp_path: Path) -> None:
    rows = [(label, pixels(label), usage) for usage in ("Training", "PublicTest", "PrivateTest")
            for label in range(7) for _ in range(2)]
    data = read_csv(write_csv(tmp_path / "fer.csv", rows))
    # CSV 4 = Sad, 5 = Surprise, 6 = Neutral
    assert [CLASSES[i] for i in CSV_TO_CANONICAL] == ["angry", "disgust", "fear", "happy", "sad", "surprise",
                                                      "neutral"]
    assert data.labels[:14:2] == [CLASSES.index(c) for c in
                                  ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")]
    assert data.images[8][0, 0] == 4  # pixel values read row-major
    splits = assign_splits(data, cfg(tmp_path / "fer.csv", Source.fer2013_csv))
    assert splits.protocol == "official"


@pytest.mark.parametrize(("row", "message"), [
    ((3, "1 2 3", "Training"), r"fer.csv:2: 3 pixel values, expected 2304"),
    ((3, pixels(0).replace("5", "x", 1), "Training"), r"fer.csv:2: pixels contain a non-numeric value"),
    ((9, pixels(0), "Training"), r"fer.csv:2: emotion 9 out of range 0-6"),
    (("happy", pixels(0), "Training"), r"fer.csv:2: emotion 'happy' is not an integer"),
    ((3, pixels(0), "Validation"), r"fer.csv:2: Usage 'Validation' not one of"),
])
def test_csv_bad_rows_stop_with_the_line(tmp_path: Path, row: tuple, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_csv(write_csv(tmp_path / "fer.csv", [row]))


def test_csv_without_usage_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "fer.csv"
    path.write_text(f"emotion,pixels\n3,{pixels(0)}\n")
    with pytest.raises(DataError, match=r"missing column\(s\) Usage"):
        read_csv(path)


def test_csv_from_a_spreadsheet_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "fer.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"emotion,pixels,Usage\n3,{pixels(0)},Training\n".encode())
    assert read_csv(path).labels == [CLASSES.index("happy")]


@pytest.mark.parametrize(("kind", "message"), [
    ("zip", r"a \.zip, not fer2013\.csv \(for the Kaggle folder layout use data=fer2013\)"),
    ("folder", r"a folder, not fer2013\.csv"),
    ("binary", r"not a text CSV \(not UTF-8\)"),
    ("latin1", r"not UTF-8 text after line"),
])
def test_the_csv_reader_on_something_else_is_one_line(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "data"
    if kind == "zip":
        path = zip_dir(make_layout(tmp_path / "fer", per_class=1), tmp_path / "fer.zip")
    elif kind == "folder":
        path = make_layout(tmp_path / "fer", per_class=1)
    elif kind == "binary":
        path.write_bytes(bytes(range(128, 256)) * 10)
    else:
        path.write_bytes(f"emotion,pixels,Usage\n3,{pixels(0)},Training\n".encode() + b"3,\xe9\xe9,Training\n")
    with pytest.raises(DataError, match=message) as err:
        read_csv(path)
    assert "\n" not in str(err.value)


def test_read_labelled_takes_any_source(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "fer", per_class=1)
    x, y = read_labelled(root)
    assert x.shape == (14, 48, 48) and sorted(set(y.tolist())) == list(range(7))
