"""Where the realtime runner's frames come from and where its annotated frames go.

Sources: a webcam index, a video file, an RTSP/HTTP URL (anything `cv2.VideoCapture` opens), one image, or a
folder of images. Each one that cannot be opened is a `RunError` with the one line the user sees; once running,
a stream that ends or drops simply ends the run, and an unreadable image in a folder is skipped and counted.
The sink encodes annotated video and images on its own thread, because encoding a 640x480 frame costs about as
much as detecting and classifying it, and a user's per-frame latency should not include it.
"""

from __future__ import annotations

import errno
import os
import queue
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.inference.contract import IMAGE_SUFFIXES, OPENCV_MISSING
from pipeline.inference.errors import first_line
from pipeline.inference.images import decode, quiet_stderr
from pipeline.inference.registry import redact

try:
    import cv2
except ImportError as e:  # neither OpenCV extra installed
    raise ImportError(OPENCV_MISSING) from e


# An animated GIF is read as its first frame, like a still image; the pipeline's own data reader does not take it.
SOURCE_SUFFIXES = IMAGE_SUFFIXES | {".gif"}


class RunError(RuntimeError):
    """A source, output or detector that cannot be used; the message is the one line the user sees."""


def read_image(path: Path) -> tuple[np.ndarray | None, str]:
    """(BGR image, "") or (None, why it cannot be used: the line the user sees after the file's name)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    frame, why = decode(data)
    if frame is None and why.startswith("not a readable GIF"):  # an OpenCV without its GIF decoder: FFmpeg's
        with quiet_stderr():
            frame = _first_frame(path)
        if frame is not None:
            return frame, ""
    return frame, why


def _first_frame(path: Path) -> np.ndarray | None:
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        return frame if ok else None
    finally:
        capture.release()


class ImageSource:
    """One image or a folder of them; a file that does not decode (or is cut short) is skipped with one line
    naming it, and counted by reason for the summary; it is not fatal."""

    live = False

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.index, self.skipped, self.fps = paths, 0, 0, 0.0
        self.reasons: Counter[str] = Counter()

    def read(self) -> tuple[np.ndarray | None, str]:
        while self.index < len(self.paths):
            path = self.paths[self.index]
            self.index += 1
            frame, why = read_image(path)
            if frame is not None:
                return frame, path.name
            self.skipped += 1
            self.reasons[why.split(" (")[0]] += 1
            print(f"note: {path}: {why}, skipped", file=sys.stderr)
        return None, ""

    def close(self) -> None:
        pass


class CaptureSource:
    """A camera, video file or stream. A failed read ends the run; files get a few retries past a bad packet."""

    def __init__(self, capture: cv2.VideoCapture, live: bool) -> None:
        self.capture, self.live, self.skipped, self.index = capture, live, 0, 0
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else 0.0

    def read(self) -> tuple[np.ndarray | None, str]:
        for _ in range(1 if self.live else 4):
            ok, frame = self.capture.read()
            if ok and frame is not None:
                self.index += 1
                return frame, f"frame_{self.index - 1:06d}.jpg"
        return None, ""

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str, timeout_s: float) -> ImageSource | CaptureSource:
    """Webcam index, URL, video file, image or folder; RunError with one line when it cannot be opened."""
    if spec.isdigit():
        capture = cv2.VideoCapture(int(spec))
        if not capture.isOpened():
            raise RunError(f"camera {spec} did not open (not connected, busy, or no permission); "
                           f"try another index or source=path/to/video")
        return CaptureSource(capture, live=True)
    if "://" in spec:
        ms = int(timeout_s * 1000)
        capture = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not capture.isOpened():
            raise RunError(f"stream {redact(spec)} did not open within {timeout_s:g} s")
        return CaptureSource(capture, live=True)
    return _open_path(Path(spec))


def _open_path(path: Path) -> ImageSource | CaptureSource:
    """A folder of images, one image, or a video file / device."""
    if path.is_dir():
        try:
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in SOURCE_SUFFIXES and p.is_file())
        except OSError as e:
            raise RunError(f"{path}: folder not readable ({e.strerror})") from None
        if not images:
            raise RunError(f"{path}: no images ({', '.join(sorted(SOURCE_SUFFIXES))}) in this folder")
        return ImageSource(images)
    if not path.exists():
        raise RunError(f"{path}: no such file or folder (source takes a webcam index, a file, a folder or a URL)")
    if path.suffix.lower() in SOURCE_SUFFIXES:
        frame, why = read_image(path)
        if frame is None:
            raise RunError(f"{path}: {why}")
        return ImageSource([path])
    capture = cv2.VideoCapture(str(path))  # a video file, or a device such as /dev/video0
    if not capture.isOpened():
        raise RunError(f"{path}: not a readable video")
    return CaptureSource(capture, live=path.is_char_device())


class Sink(threading.Thread):
    """Stores annotated frames (video and/or images) on its own thread, off the per-frame path.

    A bounded queue makes the loop wait when encoding falls behind, rather than dropping frames or memory.
    """

    def __init__(self, video: str | None, images: str | None, fps: float) -> None:
        super().__init__(name="fer-realtime-sink", daemon=True)
        self.video, self.images, self.fps = video, Path(images) if images else None, fps or 25.0
        # Written under a temporary name (same folder, same extension for the codec) and renamed at the end,
        # so an interrupted run never leaves a truncated file under the name the user asked for.
        self.partial = str(Path(video).with_name(f".partial-{Path(video).name}")) if video else ""
        self.queue: queue.Queue[tuple[np.ndarray, str] | None] = queue.Queue(maxsize=32)
        self.writer: cv2.VideoWriter | None = None
        self.size = (0, 0)
        self.write_ns: list[int] = []
        self.error: str | None = None
        self.removed = False  # the video did not play at the end, so it was deleted

    def open(self, frame: np.ndarray) -> None:
        """Open the outputs on the first frame (its size sizes the video), so failures are one line up front."""
        if self.video:
            Path(self.video).parent.mkdir(exist_ok=True)  # its own folder only (outputs.check_paths)
            codec = "mp4v" if self.video.lower().endswith(".mp4") else "MJPG"
            self.size = (frame.shape[1], frame.shape[0])
            self.writer = cv2.VideoWriter(self.partial, cv2.VideoWriter_fourcc(*codec), self.fps, self.size)
            if not self.writer.isOpened():
                raise RunError(f"{self.video}: OpenCV cannot write this video (try a .avi or .mp4 path)")
        if self.images:
            self.images.mkdir(exist_ok=True)
        self.start()

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error:  # the loop stops at its next frame (Outputs.log); drop what is still queued
                continue
            start = time.perf_counter_ns()
            frame, name = item
            try:
                if self.writer is not None:
                    same = (frame.shape[1], frame.shape[0]) == self.size  # a folder may mix image sizes
                    self.writer.write(frame if same else cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA))
                    if _no_space(self.video):  # VideoWriter drops what it cannot write without a word
                        raise OSError(f"{self.video}: {os.strerror(errno.ENOSPC)}")
                if self.images and not cv2.imwrite(str(self.images / name), frame):  # removes a cut file itself
                    raise OSError(f"cannot write {self.images / name}"
                                  + (f" ({os.strerror(errno.ENOSPC)})" if _no_space(str(self.images / name)) else ""))
            except Exception as e:  # reported by the loop at its next frame; a dead thread would block it
                self.error = self.error or first_line(e)
            self.write_ns.append(time.perf_counter_ns() - start)

    def close(self) -> None:
        if self.is_alive():
            self.queue.put(None)
            self.join()
        if self.writer is not None:
            self.writer.release()
            if _no_space(self.video):  # the container's index or trailer may not have fitted
                self.error = self.error or f"{self.video}: {os.strerror(errno.ENOSPC)}"
            if _playable(self.partial):  # it plays (up to where the disk filled): only now the real name
                os.replace(self.partial, self.video)
            else:  # e.g. the disk filled up before the container's index was written
                Path(self.partial).unlink(missing_ok=True)
                self.removed = True
                self.error = self.error or f"{self.video}: the annotated video could not be finished"


def _no_space(path: str) -> bool:
    """Whether the filesystem holding `path` has no block left (a write to it has failed or will fail)."""
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return st.f_blocks > 0 and st.f_bavail == 0


def _playable(path: str) -> bool:
    capture = cv2.VideoCapture(path)
    try:
        return capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
