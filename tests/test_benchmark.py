"""The benchmark stage's pieces, in-process and quick: the real-face frame is found, every model is timed at
each thread count, and the end-to-end path classifies the face it found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.benchmark import benchmark_frame, time_frame, time_models
from pipeline.inference.classifier import TFLiteClassifier
from pipeline.inference.contract import CLASSES
from pipeline.inference.detectors import make_detector
from pipeline.models import build_model
from pipeline.timing import machine_name
from tests.conftest import params
from tests.fixtures.tiny_model import make_tiny_model

CFG = params("benchmark.runs=5", "benchmark.warmup=1", "benchmark.keras_runs=3").benchmark


def test_the_benchmark_frame_holds_one_face_of_the_asked_size() -> None:
    frame = benchmark_frame(face_px=150)
    (face,) = make_detector("blazeface").detect(frame)
    assert frame.shape == (480, 640, 3) and 120 < face.w < 180


def test_every_model_is_timed_at_one_and_all_threads(tmp_path: Path) -> None:
    tiny = make_tiny_model(tmp_path / "tiny.tflite")
    latency = time_models(build_model(params().model), [tiny], list(CLASSES), CFG, cores=2)
    assert set(latency) == {"keras_call", "keras_predict", "tiny_t1", "tiny_t2"}
    assert all(v["runs"] in (3, 5) and 0 < v["median_ms"] <= v["p90_ms"] for v in latency.values())


def test_the_frame_path_detects_then_classifies(tmp_path: Path) -> None:
    clf = TFLiteClassifier(make_tiny_model(tmp_path / "tiny.tflite"), list(CLASSES))
    calls = []
    real = clf.predict_one
    clf.predict_one = lambda face: calls.append(face.shape) or real(face)  # count what gets classified
    times = time_frame(make_detector("blazeface"), clf, CFG)
    assert set(times) == {"frame_detect", "frame_end_to_end"}
    assert times["frame_end_to_end"]["median_ms"] >= times["frame_detect"]["median_ms"] * 0.5
    assert calls and set(calls) == {(48, 48)} and np.isfinite(times["frame_end_to_end"]["p90_ms"])


def test_a_host_is_named_by_its_generation_and_the_units_that_set_its_speed() -> None:
    zen5 = {"cpu": "AMD EPYC", "generation": "family 26 model 2", "cores": 2, "avx512f": True, "vnni": True,
            "bf16": True}
    assert machine_name(zen5) == "AMD EPYC family 26 model 2 (AVX-512 with VNNI, BF16, 2 cores)"
    older = {"cpu": "AMD EPYC", "cores": 2, "avx512f": False}  # records from before `generation` was kept
    assert machine_name(older) == "AMD EPYC (AVX2, no AVX-512, 2 cores)"
    sapphire = {"cpu": "Intel(R) Xeon(R) Processor", "generation": "family 6 model 143", "cores": 2,
                "avx512f": True, "vnni": True, "bf16": True, "amx": True}
    assert machine_name(sapphire) == ("Intel(R) Xeon(R) Processor family 6 model 143 "
                                      "(AVX-512 with VNNI, BF16, AMX, 2 cores)")
    assert machine_name({}) == "unknown"
    assert machine_name({**older, "cores": 1}) == "AMD EPYC (AVX2, no AVX-512, 1 core)"


def test_a_process_pinned_to_one_core_counts_one_core() -> None:
    """`taskset -c 0` runs report (and benchmark threads for) the core they have, not the machine's two."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from pipeline.timing import machine; from pipeline.inference.classifier import usable_cores; "
            "print(machine()['cores'], usable_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]
