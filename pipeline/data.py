"""Reading every supported source into labelled 48x48 uint8 faces, and the one split rule.

Sources: the built-in synthetic generator, FER2013 in the Kaggle folder layout (a folder or a .zip of
`train/<class>/*.jpg` and `test/<class>/*.jpg`), and the original `fer2013.csv`. Each yields images with
their FER2013 *usage* (Training, PublicTest, PrivateTest); `assign_splits` then applies the protocol of
`docs/conventions.md`: `official` (PublicTest = val, PrivateTest = test) when all three usages are
there, `holdout` (PublicTest = test, val = a seeded stratified share of Training) otherwise.

Images of other sizes or with colour are converted; unreadable files are skipped and listed; structural
problems (an unknown class folder, an empty split, a malformed CSV row) stop with one line that names
the file.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from pipeline.config import DataConfig, FileDataConfig, Protocol, Source, SyntheticDataConfig
from pipeline.inference.contract import CLASSES, IMAGE_SIZE, IMAGE_SUFFIXES

USAGES = ("Training", "PublicTest", "PrivateTest")
# fer2013.csv numbers its labels 0 Angry 1 Disgust 2 Fear 3 Happy 4 Sad 5 Surprise 6 Neutral.
CSV_TO_CANONICAL = np.array([CLASSES.index(c) for c in
                             ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")], np.uint8)


class DataError(ValueError):
    """A structural problem with the input data; its message is the one line the user sees."""


@dataclass
class Collected:
    """Faces read from a source, each with its label and FER2013 usage, plus what had to be skipped."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    usages: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def add(self, image: np.ndarray, label: int, usage: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.usages.append(usage)


def to_face(image: np.ndarray) -> np.ndarray:
    """Any decoded image -> 48x48 uint8 gray, the one input format of every model here."""
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        shrink = min(image.shape) > IMAGE_SIZE
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE),
                           interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image


@dataclass(frozen=True)
class Limits:
    """Image sizes a face crop can have; anything else is skipped with its reason, not silently resized."""

    min_side: int = 1
    max_side: int = 1 << 30
    max_aspect: float = float("inf")

    @classmethod
    def of(cls, cfg: DataConfig) -> Limits:
        if isinstance(cfg, FileDataConfig):
            return cls(cfg.min_side, cfg.max_side, cfg.max_aspect)
        return cls()

    def problem(self, height: int, width: int) -> str:
        if min(height, width) < self.min_side:
            return f"too small ({width}x{height} < data.min_side {self.min_side})"
        if max(height, width) > self.max_side:
            return f"too large ({width}x{height} > data.max_side {self.max_side})"
        if max(height, width) / min(height, width) > self.max_aspect:
            return f"not face-shaped ({width}x{height}: aspect > data.max_aspect {self.max_aspect:g})"
        return ""


def decode_image(data: bytes, limits: Limits = Limits()) -> tuple[np.ndarray | None, str]:
    """Decode image bytes to a face, or return (None, reason) for a file that must be skipped."""
    if not data:
        return None, "empty file"
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-16:]:
        return None, "truncated JPEG (no end-of-image marker)"
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        return None, "not a readable image"
    if reason := limits.problem(*image.shape[:2]):
        return None, reason
    return to_face(image), ""


# ---------------------------------------------------------------- Kaggle folder layout (folder or zip)
def _layout_files(path: Path) -> tuple[Iterator[tuple[str, bytes]], set[str]]:
    """(relative posix name, bytes) for every file, and the class folders that exist (even empty)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        dirs = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir()}
        return ((p.relative_to(path).as_posix(), p.read_bytes()) for p in files), dirs
    if not zipfile.is_zipfile(path):
        if damaged := damaged_zip(path):
            raise DataError(damaged)
        raise DataError(f"{path}: neither a folder nor a .zip of the FER2013 layout")
    archive = zipfile.ZipFile(path)
    names = sorted(n for n in archive.namelist() if not n.endswith("/"))
    dirs = {n.rstrip("/") for n in archive.namelist() if n.endswith("/")}
    dirs |= {str(PurePosixPath(n).parent) for n in names}
    return (_zip_member(path, archive, n) for n in names), dirs


def damaged_zip(path: Path) -> str | None:
    """The one-line error for a file that is meant to be a zip (a .zip name, or a zip's first bytes) but that
    `zipfile` cannot open: cut short by a download or a copy, or emptied. None for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        zipfile.ZipFile(path).close()
    except zipfile.BadZipFile as e:
        if head.startswith(b"PK") or path.suffix.lower() == ".zip":
            what = "empty, 0 bytes" if not head else f"zipfile.BadZipFile: {e}"
            return f"{path}: a damaged .zip ({what}; truncated by a download or copy?): copy or download it again"
    except OSError:
        return None
    return None


def _zip_member(path: Path, archive: zipfile.ZipFile, name: str) -> tuple[str, bytes]:
    """(name, bytes) of one member; a member the archive can't give back whole is a damaged zip, named."""
    try:
        return name, archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
        reason = f"{kind}: {e}"
        raise DataError(f"{path}: a damaged .zip ({name}: {reason}): copy or download it again") from None


def _split_and_class(name: str) -> tuple[str, str] | None:
    """('train'|'test', class folder) for `.../train/<class>/<file>`, None for files outside the layout."""
    parts = PurePosixPath(name).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if len(parts) >= 3 and parts[-3].lower() in ("train", "test"):
        return parts[-3].lower(), parts[-2]
    return None


def _usage(split_dir: str, filename: str) -> str:
    """FER2013 usage from the file-name prefix (Training_123.jpg), else from the folder (train -> Training)."""
    for usage in USAGES:
        if filename.startswith(f"{usage}_"):
            return usage
    return "Training" if split_dir == "train" else "PublicTest"


def read_folder_layout(path: Path, limits: Limits = Limits()) -> Collected:
    files, dirs = _layout_files(path)
    out = Collected()
    seen_classes: dict[tuple[str, str], int] = {}
    for d in sorted(dirs):
        where = _split_and_class(f"{d}/x")
        if where and where[1].lower() in CLASSES:
            seen_classes.setdefault(where, 0)
    for name, data in files:
        where = _split_and_class(name)
        if where is None:
            continue
        split_dir, folder = where
        label = folder.lower()
        if label not in CLASSES:
            raise DataError(f"{path}: unknown class folder '{split_dir}/{folder}' "
                            f"(expected one of: {', '.join(CLASSES)})")
        seen_classes[(split_dir, folder)] = seen_classes.get((split_dir, folder), 0) + 1
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            out.skipped.append({"file": name, "reason": "not an image file"})
            continue
        face, reason = decode_image(data, limits)
        if face is None:
            out.skipped.append({"file": name, "reason": reason})
            continue
        out.add(face, CLASSES.index(label), _usage(split_dir, PurePosixPath(name).name))
    out.empty_classes = sorted(f"{s}/{c}" for (s, c), n in seen_classes.items() if n == 0)
    if not out.images and not out.skipped:
        raise DataError(f"{path}: no images under train/<class>/ or test/<class>/")
    return out


# ---------------------------------------------------------------- fer2013.csv
def read_csv(path: Path) -> Collected:
    if zipfile.is_zipfile(path) or path.is_dir():
        raise DataError(f"{path}: a {'folder' if path.is_dir() else '.zip'}, not fer2013.csv "
                        "(for the Kaggle folder layout use data=fer2013)")
    if path.suffix.lower() != ".csv" and (damaged := damaged_zip(path)):
        raise DataError(damaged)
    out = Collected()
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise glue itself to the first column's name
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a text CSV (not UTF-8); expected emotion,pixels,Usage") from None
        missing = {"emotion", "pixels", "Usage"} - set(header or [])
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} "
                            "(expected emotion,pixels,Usage)")
        try:
            _read_rows(reader, path, out)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text after line {reader.line_num}") from None
    if not out.images:
        raise DataError(f"{path}: no data rows")
    return out


def _read_rows(reader: csv.DictReader, path: Path, out: Collected) -> None:
    """Every data row into `out`; DataError naming the line of the first malformed one."""
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        try:
            label = int(row["emotion"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: emotion {row['emotion']!r} is not an integer") from None
        if not 0 <= label <= 6:
            raise DataError(f"{where}: emotion {label} out of range 0-6")
        try:
            pixels = np.array((row["pixels"] or "").split(), dtype=np.float64)
        except ValueError:
            raise DataError(f"{where}: pixels contain a non-numeric value") from None
        if pixels.size != IMAGE_SIZE * IMAGE_SIZE:
            raise DataError(f"{where}: {pixels.size} pixel values, expected {IMAGE_SIZE * IMAGE_SIZE}")
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{where}: pixel values outside 0-255")
        usage = (row["Usage"] or "").strip()
        if usage not in USAGES:
            raise DataError(f"{where}: Usage {usage!r} not one of {', '.join(USAGES)}")
        out.add(pixels.reshape(IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8), int(CSV_TO_CANONICAL[label]), usage)


# ---------------------------------------------------------------- splits
@dataclass
class Splits:
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    protocol: str
    mapping: dict[str, str]


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held out) with `fraction` of every class held out; byte-stable for a given seed."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    if len(y) < 2:
        raise DataError(f"{len(y)} training image(s): too few to hold out a validation split")
    counts = np.bincount(y, minlength=len(CLASSES))
    present = int((counts > 0).sum())
    held_n = int(np.ceil(fraction * len(y)))
    # Stratify when every class can appear on both sides; tiny data falls back to a plain seeded split.
    can_stratify = counts[counts > 0].min() >= 2 and present <= held_n <= len(y) - present
    keep, held = train_test_split(index, test_size=fraction, random_state=seed,
                                  stratify=y if can_stratify else None)
    return np.sort(keep), np.sort(held)


def assign_splits(data: Collected, cfg: DataConfig) -> Splits:
    x = np.stack(data.images) if data.images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    y = np.asarray(data.labels, np.uint8)
    usage = np.asarray(data.usages)
    present = {u for u in USAGES if (usage == u).any()}
    protocol = cfg.protocol
    if protocol == Protocol.auto:
        protocol = Protocol.official if present == set(USAGES) else Protocol.holdout
    if protocol == Protocol.official and present != set(USAGES):
        raise DataError(f"{cfg.path}: data.protocol=official needs Training, PublicTest and PrivateTest; "
                        f"found {', '.join(sorted(present)) or 'none'}")
    train_idx = np.flatnonzero(usage == "Training")
    if train_idx.size == 0:
        raise DataError(f"{cfg.path}: the train split is empty (no Training images)")
    if protocol == Protocol.official:
        val_idx, test_idx = np.flatnonzero(usage == "PublicTest"), np.flatnonzero(usage == "PrivateTest")
        mapping = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    else:
        keep, held = stratified_holdout(y[train_idx], cfg.val_fraction, cfg.seed)
        train_idx, val_idx = train_idx[keep], train_idx[held]
        test_idx = np.flatnonzero(usage == "PublicTest")
        mapping = {"train": f"Training ({1 - cfg.val_fraction:.0%})",
                   "val": f"Training ({cfg.val_fraction:.0%}, stratified, seed {cfg.seed})",
                   "test": "PublicTest"}
        if "PrivateTest" in present:
            mapping["unused"] = "PrivateTest (held back under the holdout protocol)"
    arrays = {name: (x[idx], y[idx]) for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    for name, (xs, _) in arrays.items():
        if len(xs) == 0:
            raise DataError(f"{cfg.path}: the {name} split is empty ({mapping[name]} has no images)")
    return Splits(arrays, str(protocol), mapping)


def synthetic_splits(cfg: SyntheticDataConfig) -> Splits:
    """Train and test from disjoint seeds (2s, 2s+1), so no test face is a near-copy of a training face."""
    from pipeline.synthetic import generate

    x_train, y_train = generate(cfg.n_train, 2 * cfg.seed, noise=cfg.noise, max_rotation=cfg.max_rotation)
    x_test, y_test = generate(cfg.n_test, 2 * cfg.seed + 1, noise=cfg.noise, max_rotation=cfg.max_rotation)
    keep, held = stratified_holdout(y_train, cfg.val_fraction, cfg.seed)
    arrays = {"train": (x_train[keep], y_train[keep]), "val": (x_train[held], y_train[held]),
              "test": (x_test, y_test)}
    mapping = {"train": f"generated, seed {2 * cfg.seed} ({1 - cfg.val_fraction:.0%})",
               "val": f"generated, seed {2 * cfg.seed} ({cfg.val_fraction:.0%}, stratified)",
               "test": f"generated, seed {2 * cfg.seed + 1}"}
    return Splits(arrays, "holdout", mapping)


def read_source(cfg: DataConfig) -> tuple[Splits, Collected]:
    """The splits of the configured source and what was read (for the skip report)."""
    if isinstance(cfg, SyntheticDataConfig):
        return synthetic_splits(cfg), Collected()
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"{path}: not found (data.path; see README 'Training on FER2013')")
    collected = read_csv(path) if cfg.source == Source.fer2013_csv else read_folder_layout(path, Limits.of(cfg))
    assert isinstance(cfg, FileDataConfig)
    total = len(collected.images) + len(collected.skipped)
    if collected.skipped and len(collected.skipped) > cfg.max_skipped_fraction * total:
        first = collected.skipped[0]
        raise DataError(f"{path}: {len(collected.skipped)} of {total} files unreadable "
                        f"(> data.max_skipped_fraction={cfg.max_skipped_fraction}); "
                        f"first: {first['file']} ({first['reason']})")
    return assign_splits(collected, cfg), collected


def read_labelled(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All faces of any labelled source (folder, zip or CSV), ignoring usages: for scoring a model anywhere."""
    data = read_csv(path) if path.suffix.lower() == ".csv" else read_folder_layout(path)
    if not data.images:
        raise DataError(f"{path}: no readable images")
    return np.stack(data.images), np.asarray(data.labels, np.uint8)

