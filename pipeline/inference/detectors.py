"""Face detection for the runner: BlazeFace (default) or OpenCV's Haar cascade.

BlazeFace is the default because it is both faster and finds more faces: per 640x480 frame it takes a
few milliseconds at most against tens for the cascade, and it finds faces the cascade misses (the
benchmark stage and benchmarks/realtime.py measure both on the machine at hand). OpenCV 5 also dropped
``CascadeClassifier`` and its XML files, so Haar survives only as an option for
``opencv-python-headless<5``. LiteRT runs BlazeFace: no TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

try:
    from pipeline.inference.contract import FRAMING_MARGIN, OPENCV_MISSING
except ImportError:  # the copy inside a registered model (serving.py), loaded outside this project
    from contract import FRAMING_MARGIN, OPENCV_MISSING  # type: ignore[no-redef]

try:
    import cv2
except ImportError as e:  # neither OpenCV extra installed
    raise ImportError(OPENCV_MISSING) from e

DEFAULT_MODEL = Path(__file__).parent / "assets" / "face_detection_short_range.tflite"

_INPUT = 128  # the short-range model's square input side


@dataclass(frozen=True)
class Face:
    """A face box in frame pixels, clipped to the frame, so callers can slice without checks."""

    x: int
    y: int
    w: int
    h: int
    score: float


class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Face]:
        """Find faces in an HxWx3 BGR or HxW gray uint8 frame."""
        ...


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB if frame.ndim == 2 else cv2.COLOR_BGR2RGB)


def _to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[int, ...]:
    left, top = max(0, round(x0)), max(0, round(y0))
    right, bottom = min(width, round(x1)), min(height, round(y1))
    return left, top, right - left, bottom - top


def _anchor_centres() -> np.ndarray:
    """The model's 896 anchor centres, in the order its outputs are laid out.

    The stride-8 layer has 2 anchors per cell on a 16x16 grid; the three stride-16 layers are
    merged into 6 anchors per cell on an 8x8 grid. With a fixed anchor size only centres matter.
    """
    centres = []
    for grid, per_cell in ((16, 2), (8, 6)):
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        centres.append(np.repeat((cells + 0.5) / grid, per_cell, axis=0))
    return np.concatenate(centres)


def _weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, float]]:
    """Merge overlapping boxes into their score-weighted mean, as MediaPipe does.

    Averaging the cluster instead of keeping its best member makes boxes jitter less between
    webcam frames, which keeps the expression crop steady.
    """
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    merged = []
    remaining = np.ones(len(scores), dtype=bool)
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        top_left = np.maximum(boxes[i, :2], boxes[:, :2])
        bottom_right = np.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
        iou = inter / np.maximum(areas[i] + areas - inter, 1e-9)
        cluster = remaining & (iou > iou_threshold)
        cluster[i] = True
        weights = scores[cluster]
        merged.append((weights @ boxes[cluster] / weights.sum(), float(scores[i])))
        remaining &= ~cluster
    return merged


class BlazeFaceDetector:
    """MediaPipe's BlazeFace short-range model run with LiteRT; suited to faces within ~2 m."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.3,
        threads: int = 1,
        tiles: tuple[int, ...] | list[int] = (2, 3),
        confident: float = 0.6,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = Path(model_path) if model_path is not None else DEFAULT_MODEL
        if not path.is_file():
            raise FileNotFoundError(f"BlazeFace model file not found: {path}")
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"cannot load BlazeFace model {path}: {reason}") from exc
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        # Output order differs between converter versions, so tell them apart by their shapes.
        outputs = {int(d["shape"][-1]): d["index"] for d in self._interpreter.get_output_details()}
        if set(outputs) != {16, 1}:
            raise RuntimeError(f"{path} is not a BlazeFace short-range model (outputs {sorted(outputs)})")
        self._boxes_index, self._scores_index = outputs[16], outputs[1]
        self._anchors = _anchor_centres()
        self._logit_threshold = float(np.log(score_threshold / (1.0 - score_threshold)))
        self._iou_threshold = iou_threshold
        self._tiles = tuple(tiles)
        self._confident = confident
        self._input = np.zeros((1, _INPUT, _INPUT, 3), dtype=np.float32)

    def _letterbox(self, frame: np.ndarray) -> tuple[float, int, int]:
        """Resize first, then convert colour and pad, so both cost 128x128 work, not frame-sized work.

        Bilinear rather than area resizing: it is ten times cheaper (0.03 vs 0.3 ms for 640x480) and
        on our test frames it found the same faces with scores lower by under 0.01.
        """
        height, width = frame.shape[:2]
        scale = _INPUT / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        resized = _to_rgb(cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
        pad_x, pad_y = (_INPUT - new_w) // 2, (_INPUT - new_h) // 2
        self._input.fill(-1.0)  # black padding in the model's [-1, 1] range
        window = self._input[0, pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        np.multiply(resized, 1.0 / 127.5, out=window, casting="unsafe")
        window -= 1.0
        return scale, pad_x, pad_y

    def _candidates(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass over `frame`: boxes above the threshold (x0, y0, x1, y1 in its pixels) and their scores."""
        scale, pad_x, pad_y = self._letterbox(frame)
        self._interpreter.set_tensor(self._input_index, self._input)
        self._interpreter.invoke()
        logits = self._interpreter.get_tensor(self._scores_index)[0, :, 0]
        # Thresholding the logit equals thresholding sigmoid(logit), and skips 890-odd sigmoids.
        keep = np.flatnonzero(logits >= self._logit_threshold)
        if keep.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        raw = self._interpreter.get_tensor(self._boxes_index)[0, keep, :4] / _INPUT
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -100.0, 100.0)))
        centres = self._anchors[keep] + raw[:, :2]
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centres - half, centres + half], axis=1)  # x0, y0, x1, y1 in [0, 1]
        offset = np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
        return (boxes * _INPUT - offset) / scale, scores

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in the whole frame, and unless one scores `confident` or more, in overlapping tiles at each of
        `tiles` times the scale in turn, keeping every pass's boxes, until one does.

        The short-range model sees the frame at 128 px, so a face under ~130 px of a 640x480 frame is
        under ~26 px there and often missed (FER2013 faces of 80-135 px: 22 % found at threshold 0.5);
        tiles at 2x see it twice as large (86 %), at 3x three times (88 %). A weak box is not enough to
        stop looking: 109 of 126 faces missed on the framing benchmark's val video were frames where the
        frame pass found only a weak box elsewhere (its best score: median 0.54, 99th percentile 0.69),
        against a median of 0.79 when it found the face. The cost falls on frames with no face or only weak
        ones: 6 more passes at 2x, 20 more at 3x for a 640x480 frame (benchmarks/framing.py).
        """
        if 0 in frame.shape[:2]:  # no pixels, no face (and the letterbox would divide by zero)
            return []
        boxes, scores = self._candidates(frame)
        for factor in self._tiles:
            if len(scores) and scores.max() >= self._confident:
                break
            more_boxes, more_scores = self._tiled_candidates(frame, factor)
            boxes, scores = np.concatenate([boxes, more_boxes]), np.concatenate([scores, more_scores])
        height, width = frame.shape[:2]
        faces = []
        for box, score in _weighted_nms(boxes, scores, self._iou_threshold):
            x, y, w, h = _clip_box(*box, width, height)
            if w > 0 and h > 0:
                faces.append(Face(x, y, w, h, score))
        return faces

    def _tiled_candidates(self, frame: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
        height, width = frame.shape[:2]
        side = max(height, width) // factor
        if side < _INPUT or min(height, width) < side:  # small frames are seen at full size already
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        found_boxes, found_scores = [], []
        for x, y in tile_origins(height, width, side):
            boxes, scores = self._candidates(frame[y:y + side, x:x + side])
            found_boxes.append(boxes + np.array([x, y, x, y], np.float32))
            found_scores.append(scores)
        return np.concatenate(found_boxes), np.concatenate(found_scores)


def tile_origins(height: int, width: int, side: int) -> list[tuple[int, int]]:
    """Top-left corners of square tiles of `side` that cover the frame, neighbours overlapping by half a
    tile, so that a face cut by one tile's edge lies whole in the next."""
    def starts(length: int) -> np.ndarray:
        count = int(np.ceil(max(length - side, 0) / (side / 2))) + 1
        return np.linspace(0, length - side, count).round().astype(int)

    return [(int(x), int(y)) for y in starts(height) for x in starts(width)]


class HaarDetector:
    """The seed project's Viola-Jones cascade, kept for comparison and for machines without LiteRT."""

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 30) -> None:
        hint = "install opencv-python-headless<5 or use the blazeface detector"
        cascades = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not hasattr(cv2, "CascadeClassifier") or cascades is None:
            raise RuntimeError(f"this OpenCV ({cv2.__version__}) has no Haar cascades; {hint}")
        xml = Path(cascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(xml)) if xml.is_file() else None
        if self._cascade is None or self._cascade.empty():
            raise RuntimeError(f"Haar cascade {xml} is missing or unreadable; {hint}")
        self._options: dict[str, Any] = {
            "scaleFactor": scale_factor,
            "minNeighbors": min_neighbors,
            "minSize": (min_size, min_size),
        }

    def detect(self, frame: np.ndarray) -> list[Face]:
        if 0 in frame.shape[:2]:
            return []
        boxes = self._cascade.detectMultiScale(_to_gray(frame), **self._options)
        height, width = frame.shape[:2]
        # The cascade gives no calibrated confidence, so every accepted box scores 1.0.
        faces = [Face(*_clip_box(x, y, x + w, y + h, width, height), 1.0) for x, y, w, h in boxes]
        return [face for face in faces if face.w > 0 and face.h > 0]


def make_detector(name: str, **options: Any) -> FaceDetector:
    """Build a detector from its registry name (detector_config.DETECTORS) and that schema's options."""
    from pipeline.inference.detector_config import DETECTORS, BlazeFaceConfig, HaarConfig  # not in a served copy

    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    builder = {BlazeFaceConfig: BlazeFaceDetector, HaarConfig: HaarDetector}[DETECTORS[name]]
    return builder(**options)


def crop_face(gray: np.ndarray, face: Face, size: int = 48, margin: float = FRAMING_MARGIN) -> np.ndarray:
    """Cut the classifier's input: a square around the face, widened by `margin` on each side.

    FER2013 faces are square and include a little forehead and chin, so a bare detector box
    (often narrower than tall) would be stretched and framed unlike the training data.
    """
    height, width = gray.shape[:2]
    side = max(face.w, face.h) * (1.0 + 2.0 * margin)
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    x, y, w, h = _clip_box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, width, height)
    if w <= 0 or h <= 0:  # a face wholly outside the frame: fall back to the nearest pixel
        x, y, w, h = min(max(x, 0), width - 1), min(max(y, 0), height - 1), 1, 1
    crop = _to_gray(gray[y : y + h, x : x + w])  # convert the crop, not the frame: same pixels, far less work
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.uint8, copy=False)
