"""Stage `quantize`: models/model.keras -> models/tflite/<variant>.tflite + labels.json; register one.

Reads `quantize` (and `data` for the registered name). Variants: float32, float16 (weights), dynamic
(int8 weights, float activations) and int8 (full integer, uint8 input). Every variant takes raw 0-255
pixels: the int8 model's input is pinned to scale 1 / zero point 0 by putting an all-black and an
all-white face into the calibration set, so a raw uint8 frame crop passes straight in.

The configured variant is registered in the MLflow Model Registry as a pyfunc whose predict runs LiteRT
(`pipeline/serving.py`, logged as code, no pickle, no TensorFlow requirement).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline import tracking
from pipeline.config import CLASSES, Variant, load_params
from pipeline.files import atomic_path, load_split, sha256_file, write_json
from pipeline.prepare import OUT_DIR as PREPARED
from pipeline.runtime import LABELS_FILE, MODEL_FILE, TFLiteClassifier
from pipeline.train import MODEL_PATH

TFLITE_DIR = Path("models/tflite")
REGISTERED_PATH = Path("models/registered.json")
SERVING_CODE = Path(__file__).with_name("serving.py")
RUNTIME_CODE = Path(__file__).with_name("runtime.py")


def representative(x: np.ndarray, n: int) -> Iterator[list[np.ndarray]]:
    """Calibration faces for int8: the range ends first (pins input scale to 1), then `n` training faces."""
    yield [np.zeros((1, 48, 48, 1), np.float32)]
    yield [np.full((1, 48, 48, 1), 255, np.float32)]
    for face in x[:n]:
        yield [face[None, :, :, None].astype(np.float32)]


def convert(saved_model: Path, variant: Variant, calibration: np.ndarray, n: int) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if variant == Variant.float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == Variant.dynamic:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == Variant.int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: representative(calibration, n)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def register(path: Path, name: str, example: np.ndarray, tags: dict[str, str]) -> str:
    """Log `path` as a LiteRT pyfunc, register it as a new version of `name`, tag it; return the version."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 48, 48), "faces")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(CLASSES)), "scores")]))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow nags about type hints that would make it validate inputs by a schema we give explicitly.
        warnings.filterwarnings("ignore", message=".*[Tt]ype hint.*")
        # Fixed artifact names, so the realtime runner can fetch exactly these two files.
        shutil.copy(path, Path(tmp) / MODEL_FILE)
        shutil.copy(path.with_name(LABELS_FILE), Path(tmp) / LABELS_FILE)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(SERVING_CODE), code_paths=[str(RUNTIME_CODE)],
            artifacts={"tflite": str(Path(tmp) / MODEL_FILE), "labels": str(Path(tmp) / LABELS_FILE)},
            signature=signature, input_example=example,
            pip_requirements=[f"ai-edge-litert=={package_version('ai-edge-litert')}",
                              f"numpy=={package_version('numpy')}"],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    tracking.set_version_tags(name, version, tags)
    return version


def main() -> None:
    params = load_params()
    cfg = params.quantize
    if cfg.register not in cfg.variants:
        raise SystemExit(f"error: params.yaml: quantize.register = {cfg.register!s}: must be one of "
                         f"quantize.variants ({', '.join(map(str, cfg.variants))})")
    model = keras.models.load_model(MODEL_PATH)
    x_train, _ = load_split(PREPARED / "train.npz")
    x_test, _ = load_split(PREPARED / "test.npz")
    report = json.loads((PREPARED / "report.json").read_text())

    with tracking.stage_run("quantize", params, upstream="train") as run, tempfile.TemporaryDirectory() as tmp:
        saved_model = Path(tmp) / "saved_model"
        model.export(str(saved_model), format="tf_saved_model", verbose=False)  # one export, four conversions
        write_json(TFLITE_DIR / LABELS_FILE, list(CLASSES))
        mlflow.log_artifact(str(TFLITE_DIR / LABELS_FILE), "tflite")
        for variant in cfg.variants:
            path = TFLITE_DIR / f"{variant}.tflite"
            with atomic_path(path) as out:
                out.write_bytes(convert(saved_model, variant, x_train, cfg.representative_samples))
            TFLiteClassifier(path, list(CLASSES))  # fails here, not in production, if the export is unusable
            size_kb = path.stat().st_size / 1024
            print(f"[quantize] {variant:8s} {size_kb:8.1f} KiB -> {path}")
            mlflow.log_metric(f"size_kb_{variant}", size_kb)
            mlflow.log_artifact(str(path), "tflite")

        name = tracking.registered_name(params)
        registered = TFLITE_DIR / f"{cfg.register}.tflite"
        sha = sha256_file(registered)
        version = register(registered, name, x_test[:2], {
            "run_id": run.run_id, "variant": str(cfg.register), "tflite_sha256": sha,
            "data_source": report["source"], "data_path": report["path"], "protocol": report["protocol"],
            "train_digest": report["digests"]["train"], "test_digest": report["digests"]["test"],
            "git_commit": tracking.git_state()["commit"], "git_dirty": tracking.git_state()["dirty"],
            "dvc_data_md5": tracking.data_dependency_md5(params.data.path) or "",
        })
        record = {"name": name, "version": version, "run_id": run.run_id, "variant": str(cfg.register),
                  "tflite": str(registered), "tflite_sha256": sha}
        write_json(REGISTERED_PATH, record)
        print(f"[quantize] registered {name} version {version} ({cfg.register})")


if __name__ == "__main__":
    main()
