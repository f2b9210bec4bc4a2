"""The face detectors by name, with each one's options: the one registry of detectors.

The runner's config (`detector=<name>` and its keys), its --help, the benchmark stage's `benchmark.detector`
and `make_detector` all read `DETECTORS`, so a new detector is one schema here and one class in detectors.py.
Kept apart from detectors.py because the pipeline's config imports it: it needs neither OpenCV nor LiteRT,
and editing a detector's code does not make DVC re-run every stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.inference.schema import bounded, required


@dataclass
class BlazeFaceConfig:
    """MediaPipe's BlazeFace short-range in LiteRT (the default)."""

    name: str = required()
    score_threshold: float = bounded(gt=0.0, lt=1.0)
    iou_threshold: float = bounded(gt=0.0, lt=1.0)
    threads: int = bounded(ge=1)
    tiles: list[int] = required()  # no face in the frame: look again in tiles at these times the scale
    confident: float = bounded(gt=0.0, le=1.0)  # ... also when the best box found so far scores under this


@dataclass
class HaarConfig:
    """The seed project's Viola-Jones cascade (needs opencv-python-headless<5)."""

    name: str = required()
    scale_factor: float = bounded(gt=1.0)
    min_neighbors: int = bounded(ge=0)
    min_size: int = bounded(ge=1)


DETECTORS: dict[str, type] = {"blazeface": BlazeFaceConfig, "haar": HaarConfig}
