"""The evaluate stage's core, in-process: scores on hand-made predictions checked against their definition,
agreement with Keras, the raw-pixel floor, and the bundled release model scored as a rival."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import evaluate, flat, floor_value, logreg_baseline, score, score_release
from pipeline.inference import registry
from pipeline.inference.classifier import TFLiteClassifier
from pipeline.inference.contract import CLASSES
from tests.fixtures.tiny_model import make_tiny_model


def one_hot(labels: list[int]) -> np.ndarray:
    return np.eye(7, dtype=np.float32)[labels]


def test_score_matches_its_definition() -> None:
    y = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    pred = [0, 1, 1, 1, 3, 3, 3, 0]
    result = score(y, one_hot(pred), list(CLASSES))
    assert result["accuracy"] == 5 / 8
    assert result["per_class"]["angry"]["recall"] == 0.5 and result["per_class"]["disgust"]["precision"] == 2 / 3
    assert result["per_class"]["fear"]["f1-score"] == 0.0 and result["per_class"]["neutral"]["support"] == 0
    f1 = [result["per_class"][c]["f1-score"] for c in CLASSES]
    assert np.isclose(result["macro_f1"], np.mean(f1))
    assert np.array(result["confusion"]).sum() == 8 and result["confusion"][3][0] == 1


def test_agreement_counts_matching_predictions_with_keras() -> None:
    y = np.array([0, 1, 2, 3])
    models = evaluate(y, {"keras": one_hot([0, 1, 2, 3]), "int8": one_hot([0, 1, 2, 4])}, list(CLASSES))
    assert models["keras"]["agreement_with_keras"] == 1.0 and models["int8"]["agreement_with_keras"] == 0.75
    assert models["int8"]["accuracy"] == 0.75


def test_the_baseline_learns_what_pixels_show_and_not_what_they_hide() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 700).astype(np.uint8)
    bright = (y[:, None, None] * 30 + rng.integers(0, 20, (700, 48, 48))).astype(np.uint8)  # label in the pixels
    learnt = logreg_baseline(bright[:500], y[:500], bright[500:], y[500:], 500)
    assert learnt["accuracy"] > 0.9 and learnt["macro_f1"] > 0.9
    noise = rng.integers(0, 256, (700, 48, 48), dtype=np.uint8)  # label nowhere
    assert logreg_baseline(noise[:500], y[:500], noise[500:], y[500:], 500)["accuracy"] < 0.3


def test_the_floor_is_the_baseline_on_the_promotion_metric_or_chance() -> None:
    baseline = {"accuracy": 0.466, "macro_f1": 0.41}
    assert floor_value("baseline", "accuracy", baseline, 7) == 0.466
    assert floor_value("baseline", "macro_f1", baseline, 7) == 0.41
    assert floor_value("chance", "accuracy", baseline, 7) == 1 / 7
    assert floor_value("none", "accuracy", baseline, 7) is None


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in release folder (an untrained tiny classifier) whose card reports test split `d`*64."""
    folder = tmp_path / "release"
    folder.mkdir()
    make_tiny_model(folder / "model.tflite")
    (folder / "labels.json").write_text(json.dumps({"labels": list(CLASSES), "trained_on": "fer2013"}))
    (folder / "model_card.json").write_text(json.dumps({"release": "fer2013-test", "family": "fer2013",
                                                        "data": {"test_digest": "d" * 64}}))
    monkeypatch.setattr(registry, "RELEASE_DIR", folder)
    return folder


def test_the_release_model_is_scored_on_the_same_test_split_for_a_fer2013_model(release: Path, capsys) -> None:
    """Issue 39.1: promotion needs the release model's figure on the candidate's own test split."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 48, 48), dtype=np.uint8), rng.integers(0, 7, 40)
    rival = score_release(x, y, list(CLASSES), "fer2013", "d" * 64)
    expected = score(y, TFLiteClassifier(release / "model.tflite", list(CLASSES)).predict(x), list(CLASSES))
    assert rival is not None and rival["model"] == "release:fer2013-test" and rival["card_test_split"] is True
    assert rival["accuracy"] == expected["accuracy"] and rival["macro_f1"] == expected["macro_f1"]
    assert "the bundled release model release:fer2013-test on this test split: accuracy" in capsys.readouterr().out
    assert score_release(x, y, list(CLASSES), "fer2013", "e" * 64)["card_test_split"] is False
    assert score_release(x, y, list(CLASSES), "synthetic", "d" * 64) is None  # no release rival for synthetic
    metrics = flat({"keras": expected, "int8": expected}, "int8", None, None, 40, None, rival)
    assert metrics["test/release_accuracy"] == rival["accuracy"]
    assert metrics["test/release_macro_f1"] == rival["macro_f1"]


def test_without_a_bundled_release_model_promotion_goes_on_and_says_so(release: Path, capsys) -> None:
    (release / "model.tflite").unlink()
    x, y = np.zeros((2, 48, 48), np.uint8), np.array([0, 1])
    assert score_release(x, y, list(CLASSES), "fer2013", "d" * 64) is None
    assert "[evaluate] no bundled release model to compare with: " in capsys.readouterr().out
