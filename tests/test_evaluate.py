"""The evaluate stage's core, in-process: scores on hand-made predictions checked against their definition,
agreement with Keras, the raw-pixel floor, and the bundled release model scored as a rival."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import flat, floor_value, logreg_baseline, score, score_models, score_release, standalone
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
    assert result["per_class"]["fear"]["f1-score"] == 0.0 and result["per_class"]["happy"]["support"] == 3
    # issue 39.5: classes with no face are listed, not averaged in as 0
    assert result["absent_classes"] == ["neutral", "sad", "surprise"] and "neutral" not in result["per_class"]
    f1 = [result["per_class"][c]["f1-score"] for c in ("angry", "disgust", "fear", "happy")]
    assert np.isclose(result["macro_f1"], np.mean(f1))
    assert np.array(result["confusion"]).shape == (7, 7)
    assert np.array(result["confusion"]).sum() == 8 and result["confusion"][3][0] == 1


def test_agreement_counts_matching_predictions_with_keras() -> None:
    y = np.array([0, 1, 2, 3])
    models = score_models(y, {"keras": one_hot([0, 1, 2, 3]), "int8": one_hot([0, 1, 2, 4])}, list(CLASSES))
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


def three_class_folder(root: Path) -> Path:
    """A Kaggle-layout folder with faces of angry, happy and sad only: 6 in train/, 3 in test/."""
    import cv2

    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("test", 1)):
        for label in ("angry", "happy", "sad"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(root / split / label / f"{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    return root


def test_the_scorer_says_which_faces_it_scored_and_averages_over_the_classes_present(tmp_path: Path, capsys) -> None:
    """Issue 39.5: 3 of the 7 classes gave macro-F1 0.361 (four absent classes as 0), train/ and test/ mixed unsaid."""
    model = make_tiny_model(tmp_path / "model" / "model.tflite")
    folder = three_class_folder(tmp_path / "faces")
    standalone([f"model={model}", f"data.path={folder}"])
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["n"] == 9 and result["scored"]["usages"] == {"PublicTest": 3, "Training": 6}
    assert result["absent_classes"] == ["disgust", "fear", "neutral", "surprise"]
    assert sorted(result["per_class"]) == ["angry", "happy", "sad"]
    assert np.isclose(result["macro_f1"], np.mean([v["f1-score"] for v in result["per_class"].values()]))
    assert out.err.splitlines() == [
        f"[evaluate] scored 9 faces of {folder}: PublicTest 3 (test/), Training 6 (train/) (every usage together: "
        "data.usage=PublicTest (or Training, PrivateTest) picks some)",
        "[evaluate] per-class figures and macro-F1 over the 3 classes present (angry, happy, sad); absent from the "
        "data, so not averaged in: disgust, fear, neutral, surprise"]
    standalone([f"model={model}", f"data.path={folder}", "data.usage=PublicTest"])
    test_only = json.loads(capsys.readouterr().out)
    assert test_only["n"] == 3 and test_only["scored"]["usages"] == {"PublicTest": 3}


@pytest.mark.parametrize(("args", "message"), [
    (["data.usage=Test"], "error: data.usage=Test: expected one or more of Training, PublicTest, PrivateTest, "
                          "comma-separated"),
    (["data.usage=PrivateTest"], "error: {folder}: no faces of data.usage=PrivateTest (it has: PublicTest 3, "
                                 "Training 6)"),
])
def test_a_usage_that_is_wrong_or_absent_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    model = make_tiny_model(tmp_path / "model" / "model.tflite")
    folder = three_class_folder(tmp_path / "faces")
    with pytest.raises(SystemExit, match=f"^{re.escape(message.format(folder=folder))}$"):
        standalone([f"model={model}", f"data.path={folder}", *args])
