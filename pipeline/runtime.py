"""Running an exported .tflite in LiteRT, and finding it: a local file or a registry URI.

This module is the whole inference side of the project, so it must stay lean: NumPy, ai-edge-litert and
(only for `models:/` URIs) the MLflow client. It imports nothing else from the project, because a copy of
it ships inside every registered model (the pyfunc in `pipeline/serving.py` runs it). It never imports
TensorFlow and never unpickles a model: from the registry it downloads just the .tflite and its
labels.json, and checks the sha256 that the quantize stage recorded at registration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = "model.tflite"  # name of the .tflite inside a registered model's artifacts
LABELS_FILE = "labels.json"


class ModelError(RuntimeError):
    """A model that cannot be used here; the message is the one line the user sees."""


class ModelNotRegistered(ModelError):
    """The registry answered but holds no such name, alias or version, so a caller may fall back to another."""


def default_threads() -> int:
    return os.cpu_count() or 1


class TFLiteClassifier:
    """A 48x48 expression classifier in LiteRT; takes raw gray pixels whatever the variant's input type."""

    def __init__(self, model_path: str | Path, labels: list[str], num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(model_path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.path}: not a loadable .tflite ({str(e).splitlines()[0]})") from None
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        in_shape, out_shape = tuple(inp["shape"].tolist()), tuple(out["shape"].tolist())  # ints, not np.int32
        if in_shape != (1, 48, 48, 1):
            raise ModelError(f"{self.path}: input shape {in_shape}, expected (1, 48, 48, 1)")
        self.labels = list(labels)
        if out_shape != (1, len(self.labels)):
            raise ModelError(f"{self.path}: output shape {out_shape}, expected (1, {len(self.labels)})"
                             f" for labels {self.labels}")
        self._in, self._out = inp["index"], out["index"]
        self._in_dtype = inp["dtype"]
        self._in_scale, self._in_zero = inp["quantization"]
        self._out_scale, self._out_zero = out["quantization"]
        self._out_quantized = out["dtype"] != np.float32

    def _to_input(self, face: np.ndarray) -> np.ndarray:
        x = face.reshape(1, 48, 48, 1)
        if self._in_dtype == np.float32:
            return x.astype(np.float32)
        if self._in_scale == 1.0 and self._in_zero == 0 and self._in_dtype == np.uint8:
            return x.astype(np.uint8)  # the int8 export's contract: raw pixels pass straight through
        info = np.iinfo(self._in_dtype)
        q = np.round(x.astype(np.float32) / self._in_scale + self._in_zero)
        return np.clip(q, info.min, info.max).astype(self._in_dtype)

    def predict_one(self, face: np.ndarray) -> np.ndarray:
        """Scores [7] for one 48x48 uint8 face: the realtime hot path (set, invoke, get)."""
        self.interpreter.set_tensor(self._in, self._to_input(face))
        self.interpreter.invoke()
        scores = self.interpreter.get_tensor(self._out)[0]
        if self._out_quantized:
            scores = (scores.astype(np.float32) - self._out_zero) * self._out_scale
        return scores

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Scores [N, 7] for N faces (one invoke each, as the realtime runner does)."""
        return np.stack([self.predict_one(f) for f in faces]) if len(faces) else np.zeros((0, len(self.labels)))


def read_labels(path: str | Path) -> list[str]:
    try:
        labels = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: labels file not found (every .tflite travels with its labels.json)") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    labels = labels.get("labels") if isinstance(labels, dict) else labels
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise ModelError(f"{path}: expected a list of class names")
    return labels


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class ResolvedModel:
    tflite: Path
    labels: list[str]
    uri: str
    version: str | None = None


def resolve_model(uri: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """A local .tflite (with labels.json beside it) or `models:/<name>@<alias>` / `models:/<name>/<version>`."""
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        return ResolvedModel(path, read_labels(path.with_name(LABELS_FILE)), uri)
    return _download_registered(uri, cache_dir)


def _download_registered(uri: str, cache_dir: str | Path | None) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, ref = uri.removeprefix("models:/").partition("@")
    client = mlflow.MlflowClient()
    try:
        if ref:
            mv = client.get_model_version_by_alias(name, ref)
        else:
            name, _, version = name.partition("/")
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        where = redact(mlflow.get_tracking_uri())
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such name / alias
            raise ModelNotRegistered(f"{uri}: not in the registry at {where} ({e.error_code}); "
                                     f"run the pipeline (`make run`) to register one") from None
        reason = (str(e.message).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{uri}: the registry at {where} did not answer ({e.error_code}: {reason})") from None
    source = client.get_model_version_download_uri(mv.name, mv.version)
    dest = Path(cache_dir or Path.home() / ".cache" / "fer-pipeline") / mv.name / str(mv.version)
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for name_ in (MODEL_FILE, LABELS_FILE):
        files[name_] = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/artifacts/{name_}", dst_path=str(dest)))
    expected = mv.tags.get("tflite_sha256")
    actual = sha256_of(files[MODEL_FILE])
    if expected != actual:
        raise ModelError(f"{uri}: downloaded model sha256 {actual[:12]} does not match the registered "
                         f"{(expected or 'none')[:12]}; refusing to run it")
    return ResolvedModel(files[MODEL_FILE], read_labels(files[LABELS_FILE]), uri, str(mv.version))


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """`text` with the user:password of every URL in it replaced by ***: for logs, errors and reports.

    Applied to whole messages, not just URIs, because client errors quote the URL they failed on.
    """
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)
