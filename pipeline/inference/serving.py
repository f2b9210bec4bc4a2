"""The MLflow pyfunc of a registered model: LiteRT on the .tflite artifact ("models from code").

MLflow has no TFLite flavor. Logging this file as code (not a pickled object) lets `mlflow models
predict`, `mlflow models serve` and `mlflow.pyfunc.load_model` serve the model with ai-edge-litert, NumPy and
OpenCV only, no TensorFlow; `classifier.py`, `detectors.py`, `images.py` and `contract.py` travel in the
model's `code/` folder for use outside this project, and the BlazeFace detector among its artifacts.

Two kinds of input, told apart by their form:
- 48x48 gray face crops: `{"inputs": [[[0, ...], ...]]}` (uint8 [N, 48, 48]) -> scores [N, 7] in label order;
- whole images, JPEG/PNG/GIF bytes in base64: `{"inputs": {"image": ["<base64>", ...]}}` (or a DataFrame
  column `image`) -> per image, every face: box [x, y, w, h] in image pixels, label, score, face_score and the
  seven probabilities, as the Python API's `predict` gives them; `"params": {"min_face": 32}` sets the
  narrowest face in pixels.
Bad input is a 400 whose message is one short line naming the problem (see `BadRequest`).
"""

import base64
import binascii
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PythonModel

try:
    from pipeline.inference.classifier import TFLiteClassifier, read_labels
    from pipeline.inference.contract import FRAMING_MARGIN, IMAGE_SIZE, MIN_FACE
    from pipeline.inference.detectors import BlazeFaceDetector, crop_face
    from pipeline.inference.images import decode, pixel_size
except ImportError:  # loaded outside this project: the copies in the model's code/ folder
    from classifier import TFLiteClassifier, read_labels  # type: ignore[no-redef]
    from contract import FRAMING_MARGIN, IMAGE_SIZE, MIN_FACE  # type: ignore[no-redef]
    from detectors import BlazeFaceDetector, crop_face  # type: ignore[no-redef]
    from images import decode, pixel_size  # type: ignore[no-redef]

MAX_PIXELS = 50_000_000  # per image: a 12 MP photo is fine, a decompression bomb is refused before decoding
MAX_IMAGES = 64  # per request


class BadRequest(MlflowException):
    """A 400 whose message stays as the model wrote it.

    MLflow's scoring server rewrites the message of an MlflowException raised by `predict` into
    `Failed to predict data '<the whole request>'. Error: ...`: for a crop of the wrong shape that is 1,440
    characters of array, for a photo megabytes of base64. The first message set is kept, later ones ignored.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=BAD_REQUEST)

    @property
    def message(self) -> str:
        return self._short

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_short"):
            self._short = value


def _images_of(model_input) -> list | None:
    """The base64 strings of an image request, or None for a crops request."""
    if isinstance(model_input, dict):
        if "image" not in model_input:
            if len(model_input) == 1:  # a named tensor input arrives as {name: array}
                return None
            raise BadRequest(f"inputs {sorted(model_input)}: expected one key, image (base64 JPEG/PNG), or crops")
        values = model_input["image"]
    elif hasattr(model_input, "columns"):  # a DataFrame (dataframe_split / dataframe_records)
        if "image" not in model_input.columns:
            return None
        values = model_input["image"]
    else:
        return None
    values = np.asarray(values, dtype=object).ravel().tolist()
    if not values:
        raise BadRequest("image: no images in the request")
    if len(values) > MAX_IMAGES:
        raise BadRequest(f"image: {len(values)} images, at most {MAX_IMAGES} per request")
    return values


def _decode(index: int, value) -> np.ndarray:
    if not isinstance(value, str | bytes) or not value:
        raise BadRequest(f"image {index}: empty or not a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index}: not valid base64") from None
    size = pixel_size(data)
    if size and size[0] * size[1] > MAX_PIXELS:
        raise BadRequest(f"image {index}: {size[0]}x{size[1]} pixels, more than {MAX_PIXELS // 1_000_000} MP")
    frame, why = decode(data, quiet=False)  # the server's log is shared by threads: no stderr juggling
    if frame is None:
        raise BadRequest(f"image {index}: {why}")
    return frame


def _crops_of(model_input) -> np.ndarray:
    if hasattr(model_input, "to_numpy"):  # a DataFrame of flattened rows
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):
        (model_input,) = model_input.values()
    try:
        faces = np.asarray(model_input, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadRequest("crops: expected numbers 0-255, [N, 48, 48] (or {\"image\": [base64 ...]})") from None
    if faces.ndim == 2 and faces.shape == (IMAGE_SIZE, IMAGE_SIZE):  # one crop: one answer, not 48
        faces = faces[None]
    elif faces.ndim == 2 and faces.shape[1] == IMAGE_SIZE * IMAGE_SIZE:  # flattened rows
        faces = faces.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    elif faces.ndim == 4 and faces.shape[3] == 1:
        faces = faces[..., 0]
    if faces.ndim != 3 or faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise BadRequest(f"crops of shape {faces.shape}: expected [N, 48, 48] gray pixels "
                         "(or {\"image\": [base64 JPEG/PNG ...]} for whole images)")
    if not np.isfinite(faces).all() or faces.min(initial=0) < 0 or faces.max(initial=0) > 255:
        raise BadRequest("crops: pixel values must be 0-255")
    return faces.astype(np.uint8)


class TFLiteExpressionModel(PythonModel):
    """Crops -> scores [N, 7]; images -> faces with boxes, labels and probabilities (module docstring)."""

    def load_context(self, context) -> None:
        labels = read_labels(context.artifacts["labels"])
        self.classifier = TFLiteClassifier(context.artifacts["tflite"], labels)
        detector = context.artifacts.get("detector")  # versions registered before images were served have none
        self.detector = BlazeFaceDetector(detector) if detector else None

    # No type hints MLflow could infer a schema from: the model takes two forms of input, checked here,
    # each error a short 400 (an enforced schema would answer with the whole request in the message).
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> Any:
        """Images (base64 in `image`) or 48x48 crops. Hinted `np.ndarray`, a type MLflow neither warns about
        nor infers a schema from: the model checks its two input forms itself (see the module docstring)."""
        images = _images_of(model_input)
        if images is None:
            return self.classifier.predict(_crops_of(model_input)).astype(np.float32)
        if self.detector is None:
            raise BadRequest("this model version was registered without a face detector: send 48x48 crops")
        min_face = int((params or {}).get("min_face", MIN_FACE))
        return [self._faces(_decode(i, value), min_face) for i, value in enumerate(images)]

    def _faces(self, frame: np.ndarray, min_face: int) -> dict:
        labels = self.classifier.labels
        faces = []
        for face in (f for f in self.detector.detect(frame) if f.w >= min_face):
            p = self.classifier.predict_one(crop_face(frame, face, margin=FRAMING_MARGIN)).astype(np.float64)
            k = int(np.argmax(p))
            faces.append({"box": [face.x, face.y, face.w, face.h], "label": labels[k], "score": round(float(p[k]), 4),
                          "face_score": round(face.score, 3),
                          "probs": {c: round(float(v), 4) for c, v in zip(labels, p, strict=True)}})
        return {"width": int(frame.shape[1]), "height": int(frame.shape[0]), "faces": faces}


mlflow.models.set_model(TFLiteExpressionModel())
