"""Where a run's results go, and what it tells the user at the end.

`Outputs` writes JSON lines (one per frame), a table with one row per face (CSV, and Parquet when pyarrow is
installed) and annotated video or images (on media.Sink's thread). Files are written under `.partial-` names
and take their real names when the run ends, however it ends: the source ran out, Ctrl-C, a dropped stream
or a full disk. What was written so far then stays readable (a line cut off by a full disk is removed),
and no `.partial-` file is left behind. `Stats` collects per-step times and labels for the summary.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from pipeline.inference.detectors import Face
from pipeline.inference.media import RunError, Sink

STEPS = ("decode", "detect", "classify", "draw", "json")  # timed in the loop; `write` is timed on its thread
END_TO_END = ("decode", "detect", "classify", "json")  # what "ms per frame" means in every report


class OutputFailed(Exception):
    """A write failed (its reason is in `Outputs.error`): the run stops and keeps what was written."""


TABLE_COLUMNS = ("file", "frame", "time_s", "face", "x", "y", "w", "h", "face_score", "label", "score")


def json_line(index: int, time_s: float, faces: list[Face], probs: np.ndarray, labels: list[str], name: str) -> str:
    """One frame as compact JSON; probabilities to 4 decimals (finer is noise, and lines stay short)."""
    rows, top = probs.astype(np.float64).round(4).tolist(), probs.argmax(axis=1).tolist()
    record: dict[str, Any] = {"frame": index, "time_s": round(time_s, 4), "faces": [
        {"box": [f.x, f.y, f.w, f.h], "face_score": round(f.score, 3), "label": labels[k], "score": r[k],
         "probs": dict(zip(labels, r, strict=True))} for f, r, k in zip(faces, rows, top, strict=True)]}
    if name and not name.startswith("frame_"):
        record["image"] = name
    return json.dumps(record, separators=(",", ":"))


def table_rows(index: int, time_s: float, faces: list[Face], probs: np.ndarray, labels: list[str],
               name: str) -> list[list[Any]]:
    """One row per face: file (for images), frame, time, face index, box, detector score, label, score, probs."""
    file = name if name and not name.startswith("frame_") else ""
    rows = []
    for i, (f, p) in enumerate(zip(faces, probs.astype(np.float64).round(4).tolist(), strict=True)):
        k = int(np.argmax(p))
        rows.append([file, index, round(time_s, 4), i, f.x, f.y, f.w, f.h, round(f.score, 3), labels[k], p[k], *p])
    return rows


FILE_OUTPUTS = ("json", "csv", "parquet", "video")  # output.<key> that name one file each


def _own_folder(folder: Path, key: str, value: str) -> None:
    """An output may create its own missing folder, never a chain of them: `/nonexistent/dir/x.csv` is a
    typo to report, not a tree to make at the root of the disk."""
    if folder.is_dir():
        return
    if folder.exists():
        raise RunError(f"{value}: {folder} is a file, not a folder (output.{key})")
    if not folder.parent.is_dir():
        what = "is a file" if folder.parent.exists() else "does not exist"
        raise RunError(f"{value}: the folder {folder.parent} {what} (output.{key} creates only its own folder, "
                       f"{folder.name}/, inside an existing one)")


def check_paths(cfg: Any, source: str) -> None:
    """Refuse, with one line naming the file and the key, before any work: an output that would replace a
    file the user has (unless output.overwrite=true) or the source itself, two outputs on one file, or a
    path whose folders would have to be made more than one level deep. The folders are made when opened."""
    seen: dict[Path, str] = {}
    source_path = Path(source).resolve() if source and not source.isdigit() and "://" not in source else None
    for key in FILE_OUTPUTS:
        value = getattr(cfg, key)
        if not value or (key == "json" and value == "-"):  # `-` is stdout, not a file
            continue
        path = Path(value)
        if path.resolve() in seen:
            raise RunError(f"{value}: named by both output.{seen[path.resolve()]} and output.{key}")
        seen[path.resolve()] = key
        if path.is_dir():
            raise RunError(f"{value}: a folder (output.{key} takes a file name)")
        if source_path is not None and path.resolve() == source_path:
            raise RunError(f"{value}: is the source (output.{key} would replace it); write it elsewhere")
        if path.exists() and not cfg.overwrite:
            raise RunError(f"{value}: exists already (output.{key}); output.overwrite=true replaces it")
        _own_folder(path.parent, key, value)
    if cfg.images:
        _own_folder(Path(cfg.images), "images", cfg.images)


def check_images(cfg: Any, names: list[str] | None) -> None:
    """The annotated images must not replace files in output.images (unless output.overwrite=true):
    `names` are the file names the run will write, None for a video or stream (frame_NNNNNN.jpg)."""
    folder = Path(cfg.images) if cfg.images else None
    if folder is None or cfg.overwrite or not folder.is_dir():
        return
    taken = [n for n in names if (folder / n).exists()] if names is not None else sorted(
        p.name for p in folder.glob("frame_*.jpg"))
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise RunError(f"{folder / taken[0]}{more}: exist already (output.images); output.overwrite=true "
                       f"replaces them")


def _partial(path: str) -> Path:
    return Path(path).with_name(f".partial-{Path(path).name}")


def _cut_to_last_line(path: Path) -> None:
    """Drop a last line that a full disk cut off, so every remaining line parses."""
    with contextlib.suppress(OSError), open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(max(0, size - 65536))
        tail = fh.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        fh.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)


class Outputs:
    """The run's output files as a context manager (see the module docstring)."""

    def __init__(self, cfg: Any, labels: list[str], fps: float, stdout: TextIO = sys.stdout) -> None:
        self.cfg, self.labels, self.stdout = cfg, labels, stdout
        self.to_stdout = cfg.json == "-"
        self.sink = Sink(cfg.video, cfg.images, fps) if cfg.video or cfg.images else None
        self.files: dict[str, TextIO] = {}  # final path -> open partial file
        self.csv: Any = None
        self.error: str | None = None
        self.reader_gone = False
        self.sink_open = False
        self.empty: list[str] = []  # outputs with nothing usable in them at the end: removed
        self.write_ns: list[int] = []

    @property
    def stores_frames(self) -> bool:
        return self.sink is not None

    @property
    def logs(self) -> bool:
        return bool(self.cfg.json or self.cfg.csv or self.cfg.parquet)

    def _open(self, path: str) -> TextIO:
        partial = _partial(path)
        try:
            partial.parent.mkdir(exist_ok=True)  # its own folder only (check_paths saw the parent exists)
            fh = open(partial, "w", newline="", buffering=1 << 16)  # noqa: SIM115 (closed in __exit__)
        except OSError as e:
            raise RunError(f"{path}: cannot write here ({e.strerror})") from None
        self.files[path] = fh
        return fh

    def __enter__(self) -> Outputs:
        try:
            if self.cfg.json and not self.to_stdout:
                self._open(self.cfg.json)
            table = self.cfg.csv or (str(_partial(self.cfg.parquet).with_suffix(".csv")) if self.cfg.parquet else None)
            if table:
                fh = self._open(table)
                self.csv = csv.writer(fh)
                self.csv.writerow([*TABLE_COLUMNS, *self.labels])
                try:  # now, so that a disk that is already full is reported before the first frame
                    fh.flush()
                except OSError as e:
                    raise RunError(f"{table}: cannot write here ({e.strerror})") from None
        except BaseException:
            self._close_files()
            raise
        return self

    def log(self, index: int, time_s: float, name: str, faces: list[Face], probs: np.ndarray) -> None:
        """Log one frame's results; OutputFailed when a file cannot take them (e.g. the disk is full)."""
        if self.sink is not None and self.sink.error:  # the video or images failed: stop now, not at the end
            raise OutputFailed
        path = ""
        try:
            if self.cfg.json:
                line = json_line(index, time_s, faces, probs, self.labels, name) + "\n"
                path = self.cfg.json
                if self.to_stdout:
                    self.stdout.write(line)
                    self.stdout.flush()
                else:
                    self.files[self.cfg.json].write(line)
            if self.csv is not None:
                path = self.cfg.csv or self.cfg.parquet
                self.csv.writerows(table_rows(index, time_s, faces, probs, self.labels, name))
        except BrokenPipeError:  # `fer-realtime output.json=- | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.reader_gone = True
            raise KeyboardInterrupt from None
        except OSError as e:
            self.error = f"{path}: {e.strerror or e}"
            raise OutputFailed from None

    def store(self, frame: np.ndarray, name: str) -> None:
        """Queue the annotated frame for the video/images (encoded on the sink's thread)."""
        if self.sink is not None:
            if not self.sink_open:  # the first frame sizes the video
                self.sink.open(frame)
                self.sink_open = True
            self.sink.queue.put((frame, name))

    def _close_files(self) -> None:
        for path, fh in self.files.items():
            try:
                fh.close()  # closes the file even when its last flush fails
            except OSError as e:  # the buffer's last bytes did not fit either
                self.error = self.error or f"{path}: {e.strerror or e}"
            partial = _partial(path)
            _cut_to_last_line(partial)
            with contextlib.suppress(OSError):
                if self.error and partial.stat().st_size == 0:  # nothing reached the disk: no empty file
                    partial.unlink()
                    self.empty.append(path)
                else:
                    os.replace(partial, path)

    def __exit__(self, *exc: object) -> None:
        if self.sink is not None:
            self.sink.close()
            self.write_ns = self.sink.write_ns
            if self.sink.error and not self.error:
                self.error = self.sink.error
            if self.sink.removed:
                self.empty.append(str(self.cfg.video))
        self._close_files()
        if self.cfg.parquet:
            self._write_parquet()

    def _write_parquet(self) -> None:
        """The CSV table as Parquet (typed columns), then the CSV stand-in goes away unless it was asked for."""
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        table_path = self.cfg.csv or str(_partial(self.cfg.parquet).with_suffix(".csv"))
        partial = _partial(self.cfg.parquet)
        try:
            pq.write_table(pa_csv.read_csv(table_path), partial)
            os.replace(partial, self.cfg.parquet)
        except OSError as e:
            partial.unlink(missing_ok=True)
            self.error = self.error or f"{self.cfg.parquet}: {e.strerror or e}"
        finally:
            if not self.cfg.csv:
                Path(table_path).unlink(missing_ok=True)


@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    frames_without_face: int = 0
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)  # why images were skipped, for the summary
    seconds: float = 0.0
    steps_ns: list[tuple[int, ...]] = field(default_factory=list)  # one row per frame, in STEPS order
    write_ns: list[int] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    model: str = ""

    def add(self, faces: list[Face], probs: np.ndarray, labels: list[str], steps: tuple[int, ...]) -> None:
        self.frames += 1
        self.faces += len(faces)
        self.frames_without_face += not faces
        if faces:
            self.labels.update(labels[int(k)] for k in probs.argmax(axis=1))
        self.steps_ns.append(steps)

    def table(self) -> dict[str, dict[str, float]]:
        """Mean, median and p90 ms per step, plus the end-to-end sum, for the summary and the benchmark."""
        a = np.asarray(self.steps_ns, dtype=np.float64).reshape(-1, len(STEPS)) / 1e6
        cols = {s: a[:, i] for i, s in enumerate(STEPS)}
        cols["end_to_end"] = sum(cols[s] for s in END_TO_END) if len(a) else np.zeros(0)
        cols["write (thread)"] = np.asarray(self.write_ns, dtype=np.float64) / 1e6
        return {k: {"mean_ms": float(v.mean()), "median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90))}
                for k, v in cols.items() if v.any()}  # a step that never ran (draw when headless) is left out

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [f"fer-realtime: {self.frames} frames, {self.faces} faces, {fps:.1f} frames/s (mean), "
                 f"{self.skipped} skipped; model {self.model}"]
        if self.skip_reasons:
            lines.append("  skipped: " + ", ".join(f"{n} {why}" for why, n in self.skip_reasons.most_common()))
        if self.faces:
            lines.append("  labels: " + ", ".join(f"{label} {n} ({n / self.faces:.0%})"
                                                  for label, n in self.labels.most_common()))
        if self.frames_without_face:
            lines.append(f"  frames without a face: {self.frames_without_face}")
        lines.append(f"  {'step':16s} {'mean ms':>8s} {'median ms':>9s}")
        lines += [f"  {k:16s} {v['mean_ms']:8.3f} {v['median_ms']:9.3f}" for k, v in self.table().items()]
        return "\n".join(lines)
