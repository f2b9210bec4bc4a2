"""Live expression labels: `fer-realtime [key=value ...]` (Hydra-style overrides of this package's conf/config.yaml).

    fer-realtime                                    # webcam 0 in a window, the model by the resolution rule
    fer-realtime source=clip.mp4 display=false output.video=out.mp4 output.json=-
    fer-realtime source=photos/ display=false output.csv=faces.csv detector=haar model=path/to/int8.tflite

The hot path per frame is decode, detect, classify, JSON line; drawing happens only when something shows or
stores the picture, and encoding the annotated video runs on a second thread (media.Sink), so the per-step
times in the summary are the ones a user pays. Hydra's `compose` is used instead of `@hydra.main` so that a
run makes no output folders and does not change directory; the config ships inside the package, so the
command works from any directory of any install. No TensorFlow is imported anywhere on this path.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from omegaconf import OmegaConf

from pipeline.inference.contract import OPENCV_MISSING, default_tracking_uri

try:
    import cv2
except ImportError:  # neither OpenCV extra installed: one line, not a traceback
    raise SystemExit(f"error: {OPENCV_MISSING}") from None
from pipeline.inference.classifier import ModelError
from pipeline.inference.detector_config import DETECTORS
from pipeline.inference.detectors import Face
from pipeline.inference.media import CaptureSource, ImageSource, RunError, open_source
from pipeline.inference.outputs import OutputFailed, Outputs, Stats, check_images, check_paths
from pipeline.inference.recognizer import ExpressionRecognizer
from pipeline.inference.registry import redact
from pipeline.inference.schema import ConfigError, bounded, required, validate_section

CONF_DIR = Path(__file__).parent / "conf"
WINDOW = "fer-realtime"


# ---------------------------------------------------------------- config
@dataclass
class OutputConfig:
    video: str | None = required()
    images: str | None = required()
    json: str | None = required()
    csv: str | None = required()
    parquet: str | None = required()
    overwrite: bool = required()


@dataclass
class RealtimeConfig:
    model: str | None = required()
    tracking_uri: str | None = required()
    cache_dir: str | None = required()
    source: str = required()
    display: bool = required()
    output: OutputConfig = field(default_factory=OutputConfig)
    progress: bool | None = required()
    pace: bool | None = required()
    smoothing: float = bounded(ge=0.0, lt=1.0)
    min_face: int = bounded(ge=0)
    margin: float = bounded(ge=0.0, le=1.0)
    threads: int = bounded(ge=1)
    max_frames: int = bounded(ge=0)
    timeout_s: float = bounded(gt=0.0)
    detector: Any = None  # BlazeFaceConfig or HaarConfig, chosen by its `name`

    def check(self) -> str | None:
        """Combinations the types cannot see, reported like a bound."""
        if self.output.parquet:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                return f"output.parquet = {self.output.parquet}: needs pyarrow (pip install pyarrow), or use output.csv"
        return None


def load_config(overrides: list[str]) -> RealtimeConfig:
    """Compose the package's conf/ with Hydra-style overrides and validate it; ConfigError on any problem."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            raw = compose(config_name="config", overrides=overrides)
    except HydraException as e:
        text = str(e)
        if key := re.match(r"Could not override '([^']+)'", text):
            allowed = ", ".join(f.name for f in dataclasses.fields(RealtimeConfig))
            raise ConfigError(f"{key[1]}: unknown key (allowed: {allowed})") from None
        options = re.findall(r"^\t(\w+)$", text.split("Config search path")[0], flags=re.M)
        raise ConfigError(text.splitlines()[0] + (f" (options: {', '.join(options)})" if options else "")) from None
    raw = OmegaConf.create(OmegaConf.to_container(raw))  # Hydra's result is read-only (struct); we split it
    detector = raw.pop("detector", None) or OmegaConf.create({})
    cfg = validate_section(raw, "", RealtimeConfig)
    name = detector.get("name")
    if name not in DETECTORS:
        raise ConfigError(f"detector.name = {name!r}: must be one of {', '.join(DETECTORS)}")
    cfg.detector = validate_section(detector, "detector", DETECTORS[name])
    return cfg


def make_recognizer(cfg: RealtimeConfig) -> ExpressionRecognizer:
    options = {k: v for k, v in dataclasses.asdict(cfg.detector).items() if k != "name"}
    try:
        return ExpressionRecognizer(cfg.model, detector=cfg.detector.name, threads=cfg.threads, margin=cfg.margin,
                                    min_face=cfg.min_face, tracking_uri=cfg.tracking_uri or default_tracking_uri(),
                                    cache_dir=cfg.cache_dir, detector_options=options)
    except (RuntimeError, OSError, ValueError) as e:
        if isinstance(e, ModelError):
            raise
        raise RunError(f"detector {cfg.detector.name}: {e}") from None


# ---------------------------------------------------------------- per-frame work
class Smoother:
    """EMA of each face's probabilities across frames, faces matched to the last frame's by box IoU.

    A classifier's per-frame answers flicker between neighbouring expressions; averaging over a few frames
    steadies the label without a tracker, and a face that appears starts from its own first answer.
    """

    def __init__(self, alpha: float, min_iou: float = 0.3) -> None:
        self.alpha, self.min_iou = alpha, min_iou
        self.boxes = np.zeros((0, 4), np.float32)
        self.probs = np.zeros((0, 0), np.float32)

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> np.ndarray:
        if self.alpha > 0 and len(boxes) and len(self.boxes):
            lo = np.maximum(boxes[:, None, :2], self.boxes[None, :, :2])
            hi = np.minimum(boxes[:, None, :2] + boxes[:, None, 2:], self.boxes[None, :, :2] + self.boxes[None, :, 2:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
            area = boxes[:, 2] * boxes[:, 3]
            iou = inter / (area[:, None] + (self.boxes[:, 2] * self.boxes[:, 3])[None, :] - inter)
            for i in np.argsort(-iou.max(axis=1)):  # most certain matches first, each old face used once
                j = int(np.argmax(iou[i]))
                if iou[i, j] >= self.min_iou:
                    probs[i] = self.alpha * self.probs[j] + (1.0 - self.alpha) * probs[i]
                    iou[:, j] = -1.0
        self.boxes, self.probs = boxes, probs.copy()
        return probs


def _text(frame: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Text with a dark outline, legible on any background."""
    for c, thickness in (((0, 0, 0), 4), (colour, 2)):
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6, c, thickness, cv2.LINE_AA)


def draw(frame: np.ndarray, faces: list[Face], probs: np.ndarray, labels: list[str], fps: float) -> None:
    for face, p in zip(faces, probs, strict=True):
        k = int(p.argmax())
        cv2.rectangle(frame, (face.x, face.y), (face.x + face.w, face.y + face.h), (0, 220, 0), 2)
        _text(frame, f"{labels[k]} {p[k]:.2f}", (face.x, max(face.y - 6, 14)), (0, 220, 0))
    if fps > 0:  # none for a single image
        _text(frame, f"{fps:.0f} FPS", (8, 22), (0, 200, 255))


class Window:
    """The optional preview window; `closed()` is true once the user pressed ESC/q or closed it."""

    def __init__(self, wanted: bool, still: bool) -> None:
        self.open, self.still = wanted, still
        if wanted and (problem := _display_problem()):
            print(f"note: display=true but no window can open ({problem}); running headless", file=sys.stderr)
            self.open = False

    def show(self, frame: np.ndarray) -> bool:
        """Show `frame`; False when the user asked to stop."""
        cv2.imshow(WINDOW, frame)
        key = cv2.waitKey(0 if self.still else 1) & 0xFF  # images wait for a key; video keeps going
        return key not in (27, ord("q")) and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self.open:
            cv2.destroyAllWindows()


def _display_problem() -> str | None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no DISPLAY"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        return "this OpenCV has no GUI (opencv-python-headless); `pip install 'fer-pipeline[gui]'` for a window"
    return None


def _frames_expected(source: ImageSource | CaptureSource, max_frames: int) -> int | None:
    """How many frames the source will give, when that is known in advance (a folder, a video file)."""
    if isinstance(source, ImageSource):
        n = len(source.paths)
    elif source.live:
        return max_frames or None
    else:
        n = int(source.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    return min(n, max_frames) if n and max_frames else n or max_frames or None


def _progress(cfg: RealtimeConfig, total: int | None) -> Any:
    """A tqdm bar on stderr where the length is known (and stderr is a terminal, unless progress=true)."""
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty() and total is not None
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------- pacing
def paced(pace: bool | None, source: ImageSource | CaptureSource, window_open: bool) -> bool:
    """Whether to hold a video file to its own frame rate: by default (pace=null) when it is shown in a window,
    so a clip plays as recorded rather than at whatever rate the machine reaches; pace=true paces it headless
    too, pace=false never. Webcams and streams already come at their own rate, images have none."""
    if isinstance(source, ImageSource) or source.live or not source.fps:
        return False
    return window_open if pace is None else pace


class Pacer:
    """When each frame of a paced video is due: frame i at start + i / fps. A machine slower than the clip
    plays it as fast as it can; after a stall (a dragged window) the clock restarts rather than racing to
    catch up, so playback never runs faster than the clip's own rate."""

    def __init__(self, fps: float) -> None:
        self.period_ns, self.start_ns = 1e9 / fps, None

    def wait_s(self, index: int, now_ns: int) -> float:
        """Seconds to wait before showing frame `index` (0-based), at `now_ns` on a monotonic clock."""
        if self.start_ns is None:
            self.start_ns = now_ns
        due = self.start_ns + index * self.period_ns
        if now_ns > due + self.period_ns:  # more than a frame late: restart the schedule at this frame
            self.start_ns = now_ns - index * self.period_ns
            return 0.0
        return max(0.0, (due - now_ns) / 1e9)


# ---------------------------------------------------------------- the loop
def frames(source: ImageSource | CaptureSource, max_frames: int, clock: Any) -> Iterator[tuple[np.ndarray, str, int]]:
    """(frame, name, decode nanoseconds) until the source ends or `max_frames` were read."""
    n = 0
    while max_frames == 0 or n < max_frames:
        start = clock()
        frame, name = source.read()
        if frame is None:
            return
        n += 1
        yield frame, name, clock() - start


class FrameWork:
    """What happens to each frame: detect, classify (smoothed over frames), annotate; times each step."""

    def __init__(self, rec: ExpressionRecognizer, smoothing: float, drawing: bool) -> None:
        self.rec, self.smoother, self.drawing = rec, Smoother(smoothing), drawing
        self.buffer = np.empty((16, len(rec.labels)), np.float32)
        self.fps, self.last, self.clock = 0.0, 0, time.perf_counter_ns

    def __call__(self, frame: np.ndarray, first: bool) -> tuple[list[Face], np.ndarray, tuple[int, int, int]]:
        """(faces, probabilities, (detect, classify, draw) nanoseconds); draws onto `frame` when drawing."""
        t0 = self.clock()
        faces = self.rec.detect(frame)
        t1 = self.clock()
        if len(faces) > len(self.buffer):
            self.buffer = np.empty((2 * len(faces), len(self.rec.labels)), np.float32)
        boxes = np.array([(f.x, f.y, f.w, f.h) for f in faces], np.float32).reshape(-1, 4)
        probs = self.smoother.update(boxes, self.rec.classify(frame, faces, self.buffer[: len(faces)]))
        t2 = self.clock()
        if self.drawing:
            if not first:  # the loop's own rate, smoothed so the number is readable
                rate = 1e9 / max(t0 - self.last, 1)
                self.fps = rate if self.fps == 0 else 0.9 * self.fps + 0.1 * rate
            draw(frame, faces, probs, self.rec.labels, self.fps)
        self.last = t0
        return faces, probs, (t1 - t0, t2 - t1, self.clock() - t2 if self.drawing else 0)


def _open_checked(cfg: RealtimeConfig) -> CaptureSource | ImageSource:
    """The source, once the annotated images it would produce are known not to overwrite a user's files."""
    source = open_source(cfg.source, cfg.timeout_s)
    try:
        check_images(cfg.output, [p.name for p in source.paths] if isinstance(source, ImageSource) else None)
    except RunError:
        source.close()
        raise
    return source


def run(cfg: RealtimeConfig, stdout: TextIO = sys.stdout) -> Stats:
    """Open everything (each failure one line), then decode, detect, classify, draw and log until the source ends."""
    check_paths(cfg.output, cfg.source)  # before the model loads: a refused output costs nothing
    rec = make_recognizer(cfg)
    print(f"model: {rec.why}", file=sys.stderr)
    source = _open_checked(cfg)
    window = Window(cfg.display, still=isinstance(source, ImageSource))
    stats = Stats(model=rec.model.uri + (f" (version {rec.model.version})" if rec.model.version else ""))
    bar = _progress(cfg, _frames_expected(source, cfg.max_frames))
    out = Outputs(cfg.output, rec.labels, source.fps, stdout)
    work, clock = FrameWork(rec, cfg.smoothing, drawing=window.open or out.stores_frames), time.perf_counter_ns
    pacer = Pacer(source.fps) if paced(cfg.pace, source, window.open) else None
    start = clock()
    try:
        with out:
            for frame, name, decode_ns in frames(source, cfg.max_frames, clock):
                faces, probs, (detect_ns, classify_ns, draw_ns) = work(frame, first=stats.frames == 0)
                t0 = clock()
                media_time = stats.frames / source.fps if source.fps and not source.live else (t0 - start) / 1e9
                out.log(stats.frames, media_time, name, faces, probs)
                log_ns = clock() - t0 if out.logs else 0
                out.store(frame, name)
                stats.add(faces, probs, rec.labels, (decode_ns, detect_ns, classify_ns, draw_ns, log_ns))
                if bar is not None:
                    bar.update(1)
                if pacer is not None:
                    time.sleep(pacer.wait_s(stats.frames - 1, clock()))
                if window.open and not window.show(frame):
                    break
    except (KeyboardInterrupt, OutputFailed):
        pass  # Ctrl-C is how a webcam run ends without a window; either way the outputs are closed and kept
    finally:
        stats.seconds = (clock() - start) / 1e9
        if bar is not None:
            bar.close()
        source.close()
        window.close()
    stats.skipped, stats.write_ns = source.skipped, out.write_ns
    stats.skip_reasons = getattr(source, "reasons", stats.skip_reasons)
    if out.error:
        removed = f"; removed {', '.join(out.empty)} (nothing usable in it)" if out.empty else ""
        raise RunError(f"{out.error} after {stats.frames} frames; the output written so far is kept{removed}")
    if stats.frames == 0:
        raise RunError(f"{redact(cfg.source)}: opened, but no frame could be read")
    return stats


def usage() -> str:
    doc = (__doc__ or "").split("\n\n")
    detectors = "\n".join(f"  {name}: {(schema.__doc__ or '').strip()} keys: "
                           f"{', '.join(f.name for f in dataclasses.fields(schema) if f.name != 'name')}"
                           for name, schema in DETECTORS.items())
    return (f"usage:\n{doc[1]}\n\nkeys (override any as key=value; {CONF_DIR / 'config.yaml'}):\n\n"
            f"{(CONF_DIR / 'config.yaml').read_text()}\ndetectors (detector=<name>, then detector.<key>=...):\n"
            f"{detectors}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 with a summary, 1 for a model/source/output problem, 2 for a config one."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one-line errors replace its warnings
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # and FFmpeg's (read when FFmpeg is first used)
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        stats = run(cfg)
    except (ModelError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(stats.summary(), file=sys.stderr if cfg.output.json == "-" else sys.stdout)


if __name__ == "__main__":
    main()
