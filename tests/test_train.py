"""The GPU recipe (`experiment=fer2013_full`) runs on a CPU too: mixed float16, a MirroredStrategy over the
one device there is, mixup and flip TTA, for a few steps on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import models  # noqa: F401  (registers the TTA layer for loading)
from pipeline.config import compose, parse_params

from .conftest import stage, stage_dir

pytestmark = pytest.mark.integration

FULL_ON_TINY = ["experiment=fer2013_full", "data=synthetic", "data.n_train=280", "data.n_test=70",
                "train.epochs=1", "train.batch_size=32", "train.max_train_samples=96"]


def test_the_gpu_preset_asks_for_what_a_gpu_gives() -> None:
    params = parse_params(compose(["experiment=fer2013_full"]))
    assert (params.train.precision, params.train.distribute) == ("mixed_float16", "mirrored")
    assert params.model.tta_flip and params.train.augment.mixup > 0


def test_the_gpu_preset_trains_a_few_steps_on_cpu(tmp_path: Path) -> None:
    work, env = stage_dir(tmp_path, FULL_ON_TINY)
    for name in ("prepare", "train"):
        result = stage(name, work, env, timeout=600)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    metrics = json.loads((work / "metrics/train.json").read_text())
    assert metrics["epochs"] == 1
    model = keras.models.load_model(work / "models/model.keras")
    # exported in float32 (the converter's input), with the flip-TTA wrapper, on raw pixels
    core = model.get_layer("convnet")
    assert model.name.endswith("_tta") and {layer.compute_dtype for layer in core.layers} == {"float32"}
    scores = model.predict(np.full((2, 48, 48, 1), 128, np.float32), verbose=0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-3)
