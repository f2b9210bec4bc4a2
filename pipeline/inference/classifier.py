"""An exported .tflite expression classifier in LiteRT, and the labels.json that travels with it.

NumPy and ai-edge-litert only, and nothing else of the project: a copy of this file ships inside every
registered model (the pyfunc in `serving.py` runs it), so it must work on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class ModelError(RuntimeError):
    """A model that cannot be used here; the message is the one line the user sees."""


def usable_cores() -> int:
    """The cores this process may run on, one inference thread each: under `taskset` or a container's
    cpuset it is fewer than the machine has, and threads (or a figure) beyond them would be wrong."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def read_labels_file(path: str | Path) -> dict:
    """labels.json as a dict: `labels` (class names in output order) and, when the pipeline wrote it,
    `trained_on` (the data family). A bare list, as older exports wrote, is read as the labels alone."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: labels file not found (every .tflite travels with its labels.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    payload = payload if isinstance(payload, dict) else {"labels": payload}
    labels = payload.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        raise ModelError(f"{path}: expected a list of class names")
    return payload


def read_labels(path: str | Path) -> list[str]:
    return list(read_labels_file(path)["labels"])
