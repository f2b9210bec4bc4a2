"""The release model that ships inside the package: its files agree with its model card, it keeps the model
contract, and with no registry anywhere it is what the runner and the API run, and say they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.inference import ExpressionRecognizer
from pipeline.inference.classifier import TFLiteClassifier, read_labels_file
from pipeline.inference.contract import CLASSES
from pipeline.inference.registry import RELEASE_DIR, release_model, sha256_of

PHOTO = RELEASE_DIR.parent / "assets" / "astronaut.jpg"
CARD = json.loads((RELEASE_DIR / "model_card.json").read_text())


def test_the_files_are_the_ones_the_card_describes() -> None:
    model = RELEASE_DIR / "model.tflite"
    assert sha256_of(model) == CARD["sha256"] and model.stat().st_size == CARD["size_bytes"]
    assert model.stat().st_size < 5 * 2**20  # a few MB at most, as package data
    meta = read_labels_file(RELEASE_DIR / "labels.json")
    assert meta["labels"] == list(CLASSES) and meta["trained_on"] == "fer2013"
    int8 = TFLiteClassifier(model, meta["labels"]).interpreter.get_input_details()[0]
    assert int8["dtype"].__name__ == "uint8" and tuple(int8["shape"]) == (1, 48, 48, 1)


def test_the_card_names_data_terms_scores_speed_and_lineage() -> None:
    assert CARD["family"] == "fer2013" and CARD["data"]["test_split"] == "PublicTest"
    assert CARD["release"] == f"{CARD['registered']['name']}-{CARD['registered']['run_id'][:8]}"  # unique
    assert "Kaggle" in CARD["data"]["terms"] and "copyright" in CARD["data"]["terms"]
    assert 0.5 < CARD["test"]["accuracy"] < 1 and 0.4 < CARD["test"]["macro_f1"] < 1
    assert set(CARD["test"]["recall"]) == set(CLASSES)
    assert CARD["latency"]["ms_per_face_1_thread"] > 0 and CARD["latency"]["machine"]
    assert len(CARD["training"]["commit"]) == 40 and CARD["training"]["rebuild"].startswith("git checkout ")
    markdown = (RELEASE_DIR / "MODEL_CARD.md").read_text()
    assert f"{CARD['test']['accuracy']:.2%}" in markdown and CARD["sha256"] in markdown
    assert "python -m pipeline.lineage" in markdown and "rebuild   git checkout" in markdown
    assert "/work/" not in markdown + json.dumps(CARD)  # no path of the machine that made it


def test_the_card_says_whether_the_model_learned_from_val() -> None:
    from pipeline.release import data_text

    data = {"file": "fer.zip", "md5": "0" * 32, "protocol": "holdout", "test_split": "PublicTest",
            "splits": {"train": 25838, "val": 2871, "test": 3589}}
    held_out = data_text(data | {"fitted_on": ["train"]})
    assert "Validation (a seeded, stratified 10 % of Training) is the only split" in held_out
    assert data_text(data) == held_out  # a card from before the key: fitted on train
    final = data_text(data | {"fitted_on": ["train", "val"]})
    assert "fitted on train + val (28,709 faces)" in final and "no held-out validation figure" in final
    assert "is the only split" not in final


def test_without_a_registry_the_api_runs_the_release_and_says_so(tmp_path: Path) -> None:
    rec = ExpressionRecognizer(tracking_uri=f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    assert rec.model.uri == f"release:{CARD['release']}" and rec.why.startswith("the bundled release model")
    (face,) = rec.predict(PHOTO)
    assert face.label in CLASSES and rec.model.tflite == release_model().tflite
    assert not (tmp_path / "none").exists()


def test_the_runner_from_any_directory_labels_the_astronaut_with_the_release(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    result = subprocess.run([sys.executable, "-m", "pipeline.inference.realtime", f"source={PHOTO}",
                             "display=false", "output.json=-"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(record["faces"]) == 1 and record["faces"][0]["label"] in CLASSES
    assert any(line.startswith("model: the bundled release model: ") for line in result.stderr.splitlines())
    assert not (tmp_path / "mlflow.db").exists()
