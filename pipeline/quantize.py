"""Stage `quantize`: models/model.keras -> models/tflite/<variant>.tflite + labels.json; register one variant.

Reads `quantize` from params.yaml. `export()` wraps the trained network in the configured test-time views and
converts it to every variant (tested in-process); `main()` writes the files and registers the configured
variant in the MLflow Model Registry as a pyfunc that runs LiteRT (`inference/serving.py`, logged as code,
no pickle, no TensorFlow requirement).

Variants: float32, float16 (weights), dynamic (int8 weights, float activations) and int8 (full integer, uint8
input). Every variant takes raw 0-255 pixels: the int8 model's input is pinned to scale 1 / zero point 0 by
putting an all-black and an all-white face into the calibration set, so a raw uint8 frame crop passes
straight in. The registered name comes from the data `prepare` actually read (its report), not from params.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline import artifacts, cli, tracking
from pipeline.config import QuantizeConfig, Variant, ViewsConfig, load_params
from pipeline.files import atomic_path, write_json
from pipeline.inference.classifier import TFLiteClassifier
from pipeline.inference.contract import CLASSES, Family, Tag, registered_name
from pipeline.inference.registry import log_pyfunc, sha256_of
from pipeline.models import count_macs, with_views
from pipeline.splits import PreparedReport, load_split, read_report


def load_trained_model(path: Path) -> keras.Model:
    """The trained network at `path`, or one line saying the file is missing or unreadable and how to get it back.

    Keras says `File not found` for any file it cannot open as a zip (a truncated, emptied or overwritten
    model), which sends a user looking for a file that is there; the zip is checked here first, so the line
    says what is wrong with it.
    """
    if not path.is_file():
        raise SystemExit(f"error: {path}: not found (run train first: dvc repro train)")
    try:
        with zipfile.ZipFile(path) as archive:
            if damaged := archive.testzip():
                raise zipfile.BadZipFile(f"damaged member {damaged}")
        return keras.models.load_model(path)
    except Exception as e:  # BadZipFile, an h5py or JSON error from inside the archive, a model Keras can't build
        reason = ("empty, 0 bytes" if path.stat().st_size == 0 else
                  (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        raise SystemExit(f"error: {path}: unreadable Keras model ({reason}); re-run train (dvc repro -f -s train) "
                         f"or restore it from DVC's cache (dvc checkout {path})") from None


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


def export(core: keras.Model, cfg: QuantizeConfig, calibration: np.ndarray) -> tuple[keras.Model, dict[str, bytes]]:
    """The exported Keras model (core + views) and one .tflite flatbuffer per configured variant."""
    model = with_views(core, cfg.views)
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = Path(tmp) / "saved_model"
        model.export(str(saved_model), format="tf_saved_model", verbose=False)  # one export, many conversions
        return model, {str(v): convert(saved_model, v, calibration, cfg.representative_samples) for v in cfg.variants}


def family_of(report: PreparedReport) -> Family:
    return Family.synthetic if report.source == Family.synthetic else Family.fer2013


def sidecar(report: PreparedReport, views: ViewsConfig, macs: int) -> dict:
    """labels.json: the class names in output order, plus what a runner may want to say about the model."""
    return {"labels": list(CLASSES), "trained_on": str(family_of(report)),
            "views": {"flip": views.flip, "zoom": views.zoom}, "macs_per_face": macs}


def register(path: Path, name: str, example: np.ndarray, tags: dict[str, str]) -> tuple[str, bool]:
    """Register `path` as a version of `name` (a LiteRT pyfunc), tagged; (version, newly registered).

    A version whose .tflite has the same sha256 is returned instead of registering a duplicate.
    """
    client = mlflow.MlflowClient()
    same = [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get(Tag.tflite_sha256) == tags[Tag.tflite_sha256]]
    if same:
        return str(min(int(v.version) for v in same)), False
    info = log_pyfunc(path, name, example)  # the pyfunc, its code and the detector: inference/registry.py
    version = str(info.registered_model_version)
    tracking.set_version_tags(name, version, tags)
    return version, True


@dataclass
class Quantized:
    """One trained model's exports: each variant's flatbuffer, and the labels sidecar they all travel with."""

    flatbuffers: dict[str, bytes]
    sidecar: dict
    macs: int  # per face, all test-time views included


def quantize(core: keras.Model, cfg: QuantizeConfig, calibration: np.ndarray, report: PreparedReport) -> Quantized:
    """The trained network wrapped in its test-time views and converted to every configured variant."""
    model, flatbuffers = export(core, cfg, calibration)
    macs = count_macs(model)
    return Quantized(flatbuffers, sidecar(report, cfg.views, macs), macs)


def write_exports(result: Quantized) -> None:
    """Each .tflite (atomically) and labels.json; a variant that LiteRT cannot load fails here, not in use."""
    write_json(artifacts.TFLITE_LABELS, result.sidecar)
    for variant, flatbuffer in result.flatbuffers.items():
        path = artifacts.tflite_path(variant)
        with atomic_path(path) as out:
            out.write_bytes(flatbuffer)
        TFLiteClassifier(path, list(CLASSES))
        print(f"[quantize] {variant:8s} {path.stat().st_size / 1024:8.1f} KiB -> {path}")


def register_export(cfg: QuantizeConfig, report: PreparedReport, run_id: str, example: np.ndarray) -> dict:
    """Register the configured variant as a version of `<model_name>-<data family>`, tagged with what made
    it; what models/registered.json records."""
    name = registered_name(cfg.model_name, family_of(report))
    registered = artifacts.tflite_path(cfg.register)
    sha, git = sha256_of(registered), tracking.git_state()
    version, new = register(registered, name, example, {
        Tag.run_id: run_id, Tag.variant: str(cfg.register), Tag.tflite_sha256: sha,
        Tag.data_source: report.source, Tag.data_path: report.path, Tag.protocol: report.protocol,
        Tag.train_digest: report.digests["train"], Tag.test_digest: report.digests["test"],
        Tag.git_commit: git["commit"], Tag.git_dirty: git["dirty"],
        Tag.dvc_data_md5: tracking.data_dependency_md5(report.path) or "",
    })
    print(f"[quantize] {'registered' if new else 'already registered, byte-identical:'} {name} "
          f"version {version} ({cfg.register})")
    return {"name": name, "version": version, "run_id": run_id, "variant": str(cfg.register),
            "tflite": str(registered), "tflite_sha256": sha}


def main() -> None:
    params = load_params()
    core = load_trained_model(artifacts.KERAS_MODEL)
    (x_train, _), (x_test, _) = load_split("train"), load_split("test")
    report = read_report()
    with tracking.stage_run("quantize", params) as run:
        result = quantize(core, params.quantize, x_train, report)
        write_exports(result)
        for path in [artifacts.TFLITE_LABELS, *map(artifacts.tflite_path, result.flatbuffers)]:
            mlflow.log_artifact(str(path), "tflite")
        write_json(artifacts.REGISTERED, register_export(params.quantize, report, run.run_id, x_test[:2]))


if __name__ == "__main__":
    cli.run(main, __doc__, "quantize")
