"""Fixtures of the runner's tests: a tiny untrained classifier and a clip with one moving real face."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import tiny_model as tiny
from tests.fixtures import videos


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained classifier written as a TFLite flatbuffer: the runner's contract, not accuracy, is under test."""
    return tiny.make_tiny_model(tmp_path_factory.mktemp("model") / "model.tflite")


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float, float]]]:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    return path, videos.make_video(path, frames=60)
