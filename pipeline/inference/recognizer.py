"""The Python API: expressions of the faces in an image, with no TensorFlow.

    from pipeline.inference import ExpressionRecognizer
    rec = ExpressionRecognizer()                 # the model by the rule in registry.py; `rec.why` says which
    for face in rec.predict("photo.jpg"):        # a path, or a NumPy image (BGR by default, RGB or gray)
        print(face.label, round(face.score, 2), face.box)
    scores = rec.predict_faces(crops)            # [N, 7] for 48x48 gray crops, in rec.labels order

Each call is independent (no smoothing over frames; the realtime runner adds that for video).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference.classifier import TFLiteClassifier
from pipeline.inference.contract import FRAMING_MARGIN, IMAGE_SIZE, OPENCV_MISSING, default_tracking_uri

try:
    import cv2
except ImportError as e:  # neither OpenCV extra installed
    raise ImportError(OPENCV_MISSING) from e
from pipeline.inference.detectors import Face, crop_face, make_detector
from pipeline.inference.media import read_image
from pipeline.inference.registry import ResolvedModel, resolve


@dataclass(frozen=True)
class FacePrediction:
    """One face: its box in image pixels (x, y, width, height), the top label and its probability, and all
    seven probabilities by label."""

    box: tuple[int, int, int, int]
    label: str
    score: float
    probs: dict[str, float]
    face_score: float  # the detector's confidence


def as_bgr(image: str | Path | np.ndarray, channels: str = "bgr") -> np.ndarray:
    """An image path or array -> an HxWx3 uint8 BGR array (gray stays HxW); ValueError naming the problem.

    `channels` says how a 3- or 4-channel array is ordered: "bgr" (OpenCV) or "rgb" (PIL, matplotlib).
    Float arrays in 0-1 are scaled to 0-255.
    """
    if isinstance(image, str | Path):
        decoded, why = read_image(Path(image))  # a cut JPEG is refused, not decoded grey below the cut
        if decoded is None:
            raise ValueError(f"{image}: {why}")
        return decoded
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image of shape {array.shape}: expected HxW, HxWx3 or HxWx4")
    if array.shape[0] == 0 or array.shape[1] == 0:  # the detector would divide by its longer side
        raise ValueError(f"image of size {array.shape[1]}x{array.shape[0]} (width x height): no pixels to search")
    if array.dtype != np.uint8:
        array = _floats_to_uint8(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return array
    if channels not in ("bgr", "rgb"):
        raise ValueError(f"channels={channels!r}: expected 'bgr' or 'rgb'")
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_RGBA2BGR if channels == "rgb" else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if channels == "rgb" else array


def _floats_to_uint8(array: np.ndarray) -> np.ndarray:
    """Floats in 0-1 -> uint8 0-255; ValueError for other dtypes, non-finite values or values out of range.

    Non-finite values are looked for first: NaN compares false with everything, so a min/max range check
    passes it, and the cast would turn it into an arbitrary pixel (an image that silently finds no face).
    """
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image of dtype {array.dtype}: expected uint8 (0-255) or floats in 0-1")
    finite = np.isfinite(array)
    if not finite.all():
        bad = ~finite
        nan = np.isnan(array)
        kind, count = ("NaN", int(nan.sum())) if nan.any() else ("inf", int(bad.sum()))
        row, col = (int(i) for i in np.argwhere(nan if nan.any() else bad)[0][:2])
        raise ValueError(f"image of dtype {array.dtype} has {count} {kind} value(s) (first at row {row}, "
                         f"column {col}): expected finite floats in 0-1")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"image of dtype {array.dtype}: expected uint8 (0-255) or floats in 0-1")
    return (array * 255).round().astype(np.uint8)


class ExpressionRecognizer:
    """A face detector plus the expression classifier, ready to call on images or crops."""

    def __init__(self, model: str | None = None, *, detector: str = "blazeface", threads: int = 2,
                 margin: float = FRAMING_MARGIN, min_face: int = 32, tracking_uri: str | None = None,
                 cache_dir: str | Path | None = None, detector_options: dict[str, Any] | None = None,
                 resolved: ResolvedModel | None = None) -> None:
        self.model = resolved or resolve(model, tracking_uri or default_tracking_uri(), cache_dir)
        self.classifier = TFLiteClassifier(self.model.tflite, self.model.labels, num_threads=threads)
        self.detector = make_detector(detector, **(detector_options or {}))
        self.margin, self.min_face = margin, min_face

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    @property
    def why(self) -> str:
        """One line: which model runs and why (the resolution rule)."""
        return self.model.why

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces at least `min_face` pixels wide in a BGR or gray uint8 frame."""
        return [f for f in self.detector.detect(frame) if f.w >= self.min_face]

    def classify(self, frame: np.ndarray, faces: Sequence[Face], out: np.ndarray | None = None) -> np.ndarray:
        """[len(faces), 7] probabilities for faces of this frame (written into `out` when given)."""
        probs = out if out is not None else np.empty((len(faces), len(self.labels)), np.float32)
        for i, face in enumerate(faces):
            probs[i] = self.classifier.predict_one(crop_face(frame, face, margin=self.margin))
        return probs

    def predict(self, image: str | Path | np.ndarray, channels: str = "bgr") -> list[FacePrediction]:
        """Every face in `image` (a path, or an array of any size: BGR, RGB with channels="rgb", or gray)."""
        frame = as_bgr(image, channels)
        faces = self.detect(frame)
        return self.predictions(faces, self.classify(frame, faces))

    def predictions(self, faces: Sequence[Face], probs: np.ndarray) -> list[FacePrediction]:
        out = []
        for face, p in zip(faces, probs, strict=True):
            k = int(np.argmax(p))
            out.append(FacePrediction((face.x, face.y, face.w, face.h), self.labels[k], float(p[k]),
                                      {c: float(v) for c, v in zip(self.labels, p, strict=True)}, face.score))
        return out

    def predict_faces(self, crops: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """[N, 7] probabilities for N gray face crops of 48x48 (other sizes are resized, colour converted).

        `crops` is a list of crops or an array: [N, H, W] or [N, H, W, 1|3|4] for N crops, and [H, W] or
        [H, W, 3|4] for one crop (one row of answers, not one per pixel row); any other shape is a ValueError.
        """
        faces = [_to_crop(np.asarray(c), i) for i, c in enumerate(_split_crops(crops))]
        return self.classifier.predict(np.stack(faces)) if faces else np.zeros((0, len(self.labels)), np.float32)


def _split_crops(crops: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray] | np.ndarray:
    """The crops of a list, or of an array by its shape: a lone 2-D crop must not be read as H crops of a row."""
    if not isinstance(crops, np.ndarray):
        return list(crops)
    shape, expected = crops.shape, "expected [N, H, W], [N, H, W, 1|3|4], one [H, W] or one [H, W, 3|4] crop"
    if crops.ndim == 2 or (crops.ndim == 3 and shape[2] in (3, 4)):  # one crop
        if 0 in shape[:2]:
            raise ValueError(f"crops of shape {shape}: {expected}")
        return [crops]
    if crops.ndim == 3 or (crops.ndim == 4 and shape[3] in (1, 3, 4)):
        if len(crops) and 0 in shape[1:3]:
            raise ValueError(f"crops of shape {shape}: {expected}")
        return crops
    raise ValueError(f"crops of shape {shape}: {expected}")


def _to_crop(crop: np.ndarray, index: int = 0) -> np.ndarray:
    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[:, :, 0]
    if crop.ndim not in (2, 3) or (crop.ndim == 3 and crop.shape[2] not in (3, 4)) or 0 in crop.shape[:2]:
        raise ValueError(f"crop {index} of shape {crop.shape}: expected HxW gray or HxWx3 (BGR) pixels")
    if crop.dtype != np.uint8:
        raise ValueError(f"crop {index} of dtype {crop.dtype}: expected uint8 gray pixels")
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY if crop.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if crop.shape != (IMAGE_SIZE, IMAGE_SIZE):
        crop = cv2.resize(crop, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return crop
