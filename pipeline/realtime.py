"""Live expression labels: `fer-realtime [key=value ...]` (Hydra overrides of `conf/realtime/config.yaml`).

    fer-realtime                                    # webcam 0, window, the registry's champion model
    fer-realtime source=clip.mp4 display=false output.video=out.mp4 output.json=-
    fer-realtime source=photos/ output.images=annotated/ detector=haar model=models/tflite/int8.tflite

The runner is the part of the project a user installs on a laptop, so it stays lean: OpenCV, NumPy, LiteRT,
Hydra/OmegaConf and (for `models:/` URIs only) the MLflow client. It must never import TensorFlow, nor the
pipeline modules that do. The hot path per frame is decode, detect, classify, JSON line; drawing happens only
when something shows or stores the picture, and encoding the annotated video runs on a second thread, so the
per-step times in the summary are the ones a user pays. Hydra's `compose` is used instead of `@hydra.main`
so that a run makes no output folders and does not change directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, ConfigError, bounded, required, validate_section
from pipeline.faces import Face, crop_face, make_detector
from pipeline.media import ImageSource, RunError, Sink, open_source
from pipeline.runtime import ModelError, ModelNotRegistered, ResolvedModel, TFLiteClassifier, redact, resolve_model

WINDOW = "fer-realtime"
STEPS = ("decode", "detect", "classify", "draw", "json")  # timed in the loop; `write` is timed on its thread
END_TO_END = ("decode", "detect", "classify", "json")  # CONVENTIONS.md: what "ms per frame" means
MAKE_A_MODEL = ("make one with `make run` (synthetic data) or `dvc exp run -S experiment=fer2013` (FER2013), "
                "or pass model=path/to/model.tflite")


# ---------------------------------------------------------------- config
@dataclass
class OutputConfig:
    video: str | None = required()
    images: str | None = required()
    json: str | None = required()


@dataclass
class BlazeFaceConfig:
    name: str = required()
    score_threshold: float = bounded(gt=0.0, lt=1.0)
    iou_threshold: float = bounded(gt=0.0, lt=1.0)
    threads: int = bounded(ge=1)


@dataclass
class HaarConfig:
    name: str = required()
    scale_factor: float = bounded(gt=1.0)
    min_neighbors: int = bounded(ge=0)
    min_size: int = bounded(ge=1)


DETECTOR_SCHEMAS: dict[str, type] = {"blazeface": BlazeFaceConfig, "haar": HaarConfig}


@dataclass
class RealtimeConfig:
    model: str = required()
    fallback_model: str | None = required()
    tracking_uri: str | None = required()
    cache_dir: str | None = required()
    source: str = required()
    display: bool = required()
    output: OutputConfig = field(default_factory=OutputConfig)
    smoothing: float = bounded(ge=0.0, lt=1.0)
    min_face: int = bounded(ge=0)
    margin: float = bounded(ge=0.0, le=1.0)
    threads: int = bounded(ge=1)
    max_frames: int = bounded(ge=0)
    timeout_s: float = bounded(gt=0.0)
    detector: Any = None  # BlazeFaceConfig or HaarConfig, chosen by its `name`


def load_config(overrides: list[str]) -> RealtimeConfig:
    """Compose conf/realtime with Hydra-style overrides and validate it; ConfigError on any problem."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(CONF_DIR / "realtime"), version_base=None):
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
    if name not in DETECTOR_SCHEMAS:
        raise ConfigError(f"detector.name = {name!r}: must be one of {', '.join(DETECTOR_SCHEMAS)}")
    cfg.detector = validate_section(detector, "detector", DETECTOR_SCHEMAS[name])
    return cfg


# ---------------------------------------------------------------- model
def default_tracking_uri() -> str:
    """The pipeline's store (pipeline.tracking), rewritten here because that module imports all of MLflow."""
    root = Path(os.environ.get("DVC_ROOT") or ".").resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def load_model(cfg: RealtimeConfig) -> ResolvedModel:
    """`model`, else (when the registry lacks it) `fallback_model`, with a note; ModelError when neither exists."""
    uri = cfg.tracking_uri or default_tracking_uri()
    candidates = [cfg.model] + [m for m in [cfg.fallback_model] if m and m != cfg.model]
    for i, model in enumerate(candidates):
        if not model.startswith("models:/"):
            return resolve_model(model)
        # A missing SQLite file means an empty registry: say so without creating a stray mlflow.db here.
        if not (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()):
            for key, value in {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
                os.environ.setdefault(key, value)
            import mlflow
            from mlflow.exceptions import MlflowException

            mlflow.set_tracking_uri(uri)
            try:
                return resolve_model(model, cfg.cache_dir)
            except ModelNotRegistered:
                pass
            except (MlflowException, OSError) as e:  # registered, but its files cannot be fetched
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ModelError(f"{model}: download from {redact(uri)} failed ({reason})") from None
        if i + 1 < len(candidates):
            print(f"note: {model} is not registered at {redact(uri)}; trying {candidates[i + 1]}", file=sys.stderr)
    raise ModelError(f"no model registered at {redact(uri)} (looked for {' and '.join(candidates)}); {MAKE_A_MODEL}")


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


def json_line(index: int, time_s: float, faces: list[Face], probs: np.ndarray, labels: list[str], name: str) -> str:
    """One frame as compact JSON; probabilities to 4 decimals (finer is noise, and lines stay short)."""
    rows, top = probs.astype(np.float64).round(4).tolist(), probs.argmax(axis=1).tolist()
    record: dict[str, Any] = {"frame": index, "time_s": round(time_s, 4), "faces": [
        {"box": [f.x, f.y, f.w, f.h], "face_score": round(f.score, 3), "label": labels[k], "score": r[k],
         "probs": dict(zip(labels, r, strict=True))} for f, r, k in zip(faces, rows, top, strict=True)]}
    if name and not name.startswith("frame_"):
        record["image"] = name
    return json.dumps(record, separators=(",", ":"))


def _display_problem() -> str | None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no DISPLAY"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        return "this OpenCV has no GUI (opencv-python-headless); `pip install opencv-python` for a window"
    return None


# ---------------------------------------------------------------- the loop
@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    skipped: int = 0
    seconds: float = 0.0
    steps_ns: list[tuple[int, ...]] = field(default_factory=list)  # one row per frame, in STEPS order
    write_ns: list[int] = field(default_factory=list)
    model: str = ""

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
                 f"{self.skipped} skipped; model {self.model}", f"  {'step':16s} {'mean ms':>8s} {'median ms':>9s}"]
        lines += [f"  {k:16s} {v['mean_ms']:8.3f} {v['median_ms']:9.3f}" for k, v in self.table().items()]
        return "\n".join(lines)


def run(cfg: RealtimeConfig, stdout: TextIO = sys.stdout) -> Stats:
    """Open everything (each failure one line), then decode, detect, classify, draw, log until the source ends."""
    resolved = load_model(cfg)
    classifier = TFLiteClassifier(resolved.tflite, resolved.labels, num_threads=cfg.threads)
    options = {k: v for k, v in dataclasses.asdict(cfg.detector).items() if k != "name"}
    if "threads" in options:
        options["num_threads"] = options.pop("threads")
    try:
        detector = make_detector(cfg.detector.name, **options)
    except (RuntimeError, OSError, ValueError) as e:
        raise RunError(f"detector {cfg.detector.name}: {e}") from None
    source = open_source(cfg.source, cfg.timeout_s)
    display = cfg.display
    if display and (problem := _display_problem()):
        print(f"note: display=true but no window can open ({problem}); running headless", file=sys.stderr)
        display = False
    sink = Sink(cfg.output.video, cfg.output.images, source.fps) if cfg.output.video or cfg.output.images else None
    to_stdout = cfg.output.json == "-"
    log: TextIO | None = stdout if to_stdout else None
    json_partial: Path | None = None
    if cfg.output.json and not to_stdout:  # renamed to output.json when the run ends: never a truncated file
        json_partial = Path(cfg.output.json).with_name(f".partial-{Path(cfg.output.json).name}")
        json_partial.parent.mkdir(parents=True, exist_ok=True)
        log = open(json_partial, "w", buffering=1 << 16)  # noqa: SIM115 (closed in finally)

    labels = classifier.labels
    stats = Stats(model=f"{resolved.uri}" + (f" (version {resolved.version})" if resolved.version else ""))
    smoother = Smoother(cfg.smoothing)
    buffer = np.empty((16, len(labels)), np.float32)
    drawing, fps, clock = display or sink is not None, 0.0, time.perf_counter_ns
    still = isinstance(source, ImageSource)
    start = last = clock()
    try:
        while cfg.max_frames == 0 or stats.frames < cfg.max_frames:
            t0 = clock()
            frame, name = source.read()
            t1 = clock()
            if frame is None:
                break
            faces = [f for f in detector.detect(frame) if f.w >= cfg.min_face]
            t2 = clock()
            if len(faces) > len(buffer):
                buffer = np.empty((2 * len(faces), len(labels)), np.float32)
            probs = buffer[: len(faces)]
            for i, face in enumerate(faces):
                probs[i] = classifier.predict_one(crop_face(frame, face, margin=cfg.margin))
            boxes = np.array([(f.x, f.y, f.w, f.h) for f in faces], np.float32).reshape(-1, 4)
            probs = smoother.update(boxes, probs)
            t3 = clock()
            if drawing:
                if stats.frames:  # the loop's own rate, smoothed so the number is readable
                    fps = 1e9 / max(t0 - last, 1) if fps == 0 else 0.9 * fps + 0.1 * 1e9 / max(t0 - last, 1)
                draw(frame, faces, probs, labels, fps)
            last = t0
            t4 = clock()
            if log is not None:
                time_s = stats.frames / source.fps if source.fps and not source.live else (t0 - start) / 1e9
                log.write(json_line(stats.frames, time_s, faces, probs, labels, name) + "\n")
                if to_stdout:
                    log.flush()
            t5 = clock()
            stats.steps_ns.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3 if drawing else 0, t5 - t4 if log else 0))
            stats.frames += 1
            stats.faces += len(faces)
            if sink is not None:
                if stats.frames == 1:
                    sink.open(frame)
                sink.queue.put((frame, name))
            if display:
                cv2.imshow(WINDOW, frame)
                key = cv2.waitKey(0 if still else 1) & 0xFF  # images wait for a key; video keeps going
                if key in (27, ord("q")) or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                    break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a webcam run ends without a window: still print the summary
    except BrokenPipeError:  # `fer-realtime output.json=- | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        stats.seconds = (clock() - start) / 1e9
        source.close()
        if sink is not None:
            sink.close()
            stats.write_ns = sink.write_ns
        if json_partial is not None and log is not None:
            log.close()
            os.replace(json_partial, cfg.output.json)
        if display:
            cv2.destroyAllWindows()
    stats.skipped = source.skipped
    if stats.frames == 0:
        raise RunError(f"{redact(cfg.source)}: opened, but no frame could be read")
    if sink is not None and sink.error:
        raise RunError(f"writing annotated output failed: {sink.error}")
    return stats


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 with a summary, 1 for a model/source/output problem, 2 for a config one."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage:\n{(__doc__ or '').split(chr(10) * 2)[1]}\n\nkeys ({CONF_DIR / 'realtime'}):\n")
        print((CONF_DIR / "realtime" / "config.yaml").read_text())
        return
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one-line errors replace its warnings
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
