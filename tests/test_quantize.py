"""The quantize stage's core, in-process: every variant exported from an (untrained) network takes raw pixels
and agrees with Keras; test-time views travel into the .tflite; registering a byte-identical model again
returns the existing version (a real SQLite MLflow store)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from pipeline.inference.classifier import TFLiteClassifier
from pipeline.inference.contract import CLASSES, Tag
from pipeline.inference.registry import sha256_of
from pipeline.models import build_model
from pipeline.quantize import export, register
from tests.conftest import params

FACES = np.random.default_rng(0).integers(0, 256, (40, 48, 48), dtype=np.uint8)


@pytest.fixture(scope="module")
def core() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(params().model)


def exported(core: keras.Model, tmp_path: Path, *overrides: str) -> tuple[keras.Model, dict[str, Path]]:
    cfg = params("quantize.representative_samples=20", *overrides).quantize
    model, flatbuffers = export(core, cfg, FACES)
    paths = {}
    for variant, data in flatbuffers.items():
        paths[variant] = tmp_path / f"{variant}.tflite"
        paths[variant].write_bytes(data)
    return model, paths


def test_every_variant_takes_raw_pixels_and_agrees_with_keras(core, tmp_path: Path) -> None:
    model, paths = exported(core, tmp_path)
    assert set(paths) == {"float32", "float16", "dynamic", "int8"} and model is core
    reference = model.predict(FACES[..., None].astype(np.float32), verbose=0)
    for variant, path in paths.items():
        clf = TFLiteClassifier(path, list(CLASSES))
        scores = clf.predict(FACES)
        tolerance = 0.02 if variant in ("int8", "dynamic") else 1e-3
        assert np.abs(scores - reference).max() < tolerance, variant
    int8 = TFLiteClassifier(paths["int8"], list(CLASSES)).interpreter.get_input_details()[0]
    assert int8["dtype"] == np.uint8 and int8["quantization"] == (1.0, 0)  # raw pixels pass straight in


def test_a_resnet_with_squeeze_excite_gates_survives_int8(tmp_path: Path) -> None:
    """SE gates (sigmoid scores multiplied into the map) are where int8 converters lose agreement first."""
    keras.utils.set_random_seed(0)
    net = build_model(params("model=resnet_se", "model.filters=[8,16]", "model.blocks=[1,1]").model)
    model, paths = exported(net, tmp_path, "quantize.variants=[float32,int8]", "quantize.register=int8")
    reference = model.predict(FACES[..., None].astype(np.float32), verbose=0)
    for variant, tolerance in (("float32", 1e-3), ("int8", 0.02)):
        scores = TFLiteClassifier(paths[variant], list(CLASSES)).predict(FACES)
        assert np.abs(scores - reference).max() < tolerance, variant


def test_an_ensemble_with_views_survives_int8_as_one_model(tmp_path: Path) -> None:
    """`train.members`: the members' average, mirrored by the views, in one .tflite taking raw pixels."""
    from pipeline.models import count_macs, ensemble

    keras.utils.set_random_seed(0)
    cfg = params("model.filters=[8,16]", "model.convs=[1,1]").model
    members = [build_model(cfg) for _ in range(3)]
    model, paths = exported(ensemble(members), tmp_path, "quantize.views.flip=true",
                            "quantize.variants=[float32,int8]", "quantize.register=int8")
    assert count_macs(model) == 2 * 3 * count_macs(members[0])  # two views through three members
    reference = model.predict(FACES[..., None].astype(np.float32), verbose=0)
    for variant, tolerance in (("float32", 1e-3), ("int8", 0.02)):
        scores = TFLiteClassifier(paths[variant], list(CLASSES)).predict(FACES)
        assert np.abs(scores - reference).max() < tolerance, variant


def test_views_are_part_of_the_exported_model(core, tmp_path: Path) -> None:
    model, paths = exported(core, tmp_path, "quantize.views.flip=true", "quantize.variants=[float32]",
                            "quantize.register=float32")
    clf = TFLiteClassifier(paths["float32"], list(CLASSES))
    assert np.allclose(clf.predict(FACES[:4]), clf.predict(FACES[:4, :, ::-1]), atol=1e-5)  # mirror-symmetric
    assert model.name.endswith("_tta")


def test_registering_a_byte_identical_model_returns_the_existing_version(core, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    _, paths = exported(core, tmp_path, "quantize.variants=[int8]")
    (tmp_path / "labels.json").write_text(json.dumps({"labels": list(CLASSES)}))
    tags = {Tag.tflite_sha256: sha256_of(paths["int8"])}
    with mlflow.start_run():
        first, new = register(paths["int8"], "fer-expression-test", FACES[:2], dict(tags))
        assert new
        again, new_again = register(paths["int8"], "fer-expression-test", FACES[:2], dict(tags))
    assert (again, new_again) == (first, False)
    versions = mlflow.MlflowClient().search_model_versions("name = 'fer-expression-test'")
    assert len(versions) == 1 and versions[0].tags[Tag.tflite_sha256] == tags[Tag.tflite_sha256]


def _damaged(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "overwritten": bytes(len(data)), "not a model": b""}[how])
    if how == "not a model":  # a zip, but not of a Keras model
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")


@pytest.mark.parametrize("how", ["truncated", "empty", "overwritten", "not a model"])
def test_an_unreadable_trained_model_stops_quantize_with_one_line(core, tmp_path: Path, monkeypatch, how: str) -> None:
    from pipeline import quantize
    from pipeline.config import PARAMS_FILE

    (tmp_path / PARAMS_FILE).write_text((Path(__file__).parents[1] / PARAMS_FILE).read_text())
    model = tmp_path / "models" / "model.keras"
    model.parent.mkdir()
    core.save(model)
    _damaged(model, how)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        quantize.main()
    message = str(stop.value.code)
    assert message.startswith("error: models/model.keras: unreadable Keras model (") and "\n" not in message
    assert message.endswith("re-run train (dvc repro -f -s train) or restore it from DVC's cache "
                            "(dvc checkout models/model.keras)")
    assert "File not found" not in message
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "models", "models/model.keras", "params.yaml"]  # nothing else written, no MLflow store opened
