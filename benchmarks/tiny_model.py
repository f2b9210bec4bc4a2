"""An untrained 48x48 -> 7 classifier as .tflite + labels.json, for smoke runs of the realtime runner.

Tests and CI exercise the runner's contract (shapes, labels, LiteRT, every input and output), not accuracy,
so they need a model in seconds rather than a pipeline run. It goes through the real TFLite converter, like the
pipeline's exports, so it needs TensorFlow: run it with the full venv (`.venv`), never the lean one.

    .venv/bin/python benchmarks/tiny_model.py out/model.tflite
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # CONVENTIONS.md order


def make_tiny_model(path: str | Path) -> Path:
    """Write `path` and a labels.json beside it; float32 input of raw 0-255 pixels, softmax output."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((48, 48, 1))
    x = tf.keras.layers.Rescaling(1 / 255)(inputs)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs)).convert())
    (path.parent / "labels.json").write_text(json.dumps(list(CLASSES)))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/tiny_model.py OUT.tflite")
    print(f"wrote {make_tiny_model(sys.argv[1])} and labels.json")
