"""Stage `benchmark`: per-face latency of the Keras model and every TFLite variant, sizes, a real frame.

Reads `benchmark` from params.yaml. `benchmark()` does the measuring (tested in-process); `main()` reads the
models, writes metrics/benchmark.json and the chart, and logs them.

Per face (batch 1): Keras as `model(x, training=False)` and as `model.predict(x)` (the seed project's 68 ms
was the latter, mostly call overhead); each .tflite in LiteRT as set_tensor/invoke/get_tensor at 1 thread
and at all cores. End to end: a 640x480 frame holding a real face photo, face detection + crop +
classification with the registered variant; no face found is an error, because a benchmark that
classifies nothing measures nothing. The MACs of the model and the machine's measured compute peak turn
the latency into a share of what this CPU can do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import keras
import mlflow
import numpy as np

from pipeline import artifacts, cli, plots, tracking
from pipeline.config import BenchmarkConfig, ViewsConfig, load_params
from pipeline.files import write_json
from pipeline.inference.classifier import TFLiteClassifier, read_labels_file, usable_cores
from pipeline.inference.contract import Tag
from pipeline.inference.detectors import FaceDetector, crop_face, make_detector
from pipeline.models import count_macs, with_views
from pipeline.timing import compute_peak_gmacs, machine, machine_name, time_calls

PHOTO = Path(__file__).parent / "inference" / "assets" / "astronaut.jpg"


def benchmark_frame(face_px: int = 200) -> np.ndarray:
    """A 640x480 BGR frame with the public-domain astronaut portrait scaled so her face is ~`face_px` wide,
    centred (the face spans ~94 px of the 512 px photo, centred at (225, 128))."""
    photo = cv2.imread(str(PHOTO))
    if photo is None:
        raise SystemExit(f"error: {PHOTO}: missing or unreadable (the benchmark's real face photo)")
    scale = face_px / 94
    scaled = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 90, np.uint8)
    ox, oy = round(320 - 225 * scale), round(240 - 128 * scale)
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + scaled.shape[1], 640), min(oy + scaled.shape[0], 480)
    frame[y0:y1, x0:x1] = scaled[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return frame


def time_models(model: keras.Model, tflite: list[Path], labels: list[str], cfg: BenchmarkConfig,
                cores: int) -> dict[str, dict[str, float]]:
    """Per-face latency of the Keras model (two ways) and of every .tflite at 1 and all threads."""
    face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    x = face[None, :, :, None].astype(np.float32)
    latency = {
        "keras_call": time_calls(lambda: model(x, training=False), cfg.keras_runs, min(cfg.warmup, 10)),
        "keras_predict": time_calls(lambda: model.predict(x, verbose=0), cfg.keras_runs, min(cfg.warmup, 10)),
    }
    for path in tflite:
        for threads in sorted({1, cores}):
            clf = TFLiteClassifier(path, labels, num_threads=threads)
            latency[f"{path.stem}_t{threads}"] = time_calls(lambda c=clf: c.predict_one(face), cfg.runs, cfg.warmup)
    return latency


def time_frame(detector: FaceDetector, classifier: TFLiteClassifier, cfg: BenchmarkConfig) -> dict[str, dict]:
    """Detection alone and detection + crop + classification on a 640x480 frame with one real face."""
    frame = benchmark_frame()
    if not detector.detect(frame):
        raise SystemExit(f"error: {cfg.detector} found no face in the benchmark frame ({PHOTO})")

    def end_to_end() -> None:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        for f in detector.detect(frame):
            classifier.predict_one(crop_face(gray, f))

    return {"frame_detect": time_calls(lambda: detector.detect(frame), cfg.runs, cfg.warmup),
            "frame_end_to_end": time_calls(end_to_end, cfg.runs, cfg.warmup)}


def benchmark(model: keras.Model, tflite: list[Path], labels: list[str], registered: dict, cfg: BenchmarkConfig,
              cores: int) -> dict[str, Any]:
    """Every latency, size and the compute peak: the contents of metrics/benchmark.json."""
    print("[benchmark] measuring this machine's float32 peak ...")
    peak = {"1": compute_peak_gmacs(1), str(cores): compute_peak_gmacs(cores)}
    macs = count_macs(model)
    latency = time_models(model, tflite, labels, cfg, cores)
    classifier = TFLiteClassifier(registered["tflite"], labels, num_threads=1)
    latency |= time_frame(make_detector(cfg.detector), classifier, cfg)
    # Achieved GMAC/s per variant at 1 thread. The peak is float32 FMA; int8 can exceed it on CPUs with
    # VNNI (4 int8 MACs per lane), so only the float32 variant's share reads as "how close to the floor".
    achieved = {name.removesuffix("_t1"): macs / (v["median_ms"] / 1e3) / 1e9
                for name, v in latency.items() if name.endswith("_t1")}
    return {
        "machine": machine(), "macs_per_face": macs, "peak_gmacs": peak,
        "registered_variant": registered["variant"], "detector": cfg.detector,
        "registered": {k: registered[k] for k in ("name", "version", "run_id")},
        "latency": latency, "size_bytes": {"keras": artifacts.KERAS_MODEL.stat().st_size}
        | {p.stem: p.stat().st_size for p in tflite},
        "achieved_gmacs_t1": achieved, "share_of_peak_t1": achieved.get("float32", 0.0) / peak["1"],
    }


def flat(details: dict[str, Any], cores: int) -> dict[str, float]:
    """metrics/benchmark.json: the registered variant's figures and the few others worth a column
    (every latency with its p90, and the machine, stay in the details file and the chart)."""
    latency, variant = details["latency"], details["registered_variant"]
    return {
        "latency/ms_per_face": latency[f"{variant}_t1"]["median_ms"],
        "latency/ms_per_face_all_cores": latency[f"{variant}_t{cores}"]["median_ms"],
        "latency/keras_ms_per_face": latency["keras_call"]["median_ms"],
        "latency/frame_ms": latency["frame_end_to_end"]["median_ms"],
        "latency/detect_ms": latency["frame_detect"]["median_ms"],
        "size/kib": details["size_bytes"][variant] / 1024,
        "size/keras_kib": details["size_bytes"]["keras"] / 1024,
        "compute/macs_per_face": details["macs_per_face"],
        "compute/peak_gmacs": details["peak_gmacs"]["1"],
        "compute/float32_share_of_peak": details["share_of_peak_t1"],
    }


def exported_model(sidecar: dict) -> keras.Model:
    """The Keras twin of the exported .tflite files: the trained network with the views quantize added."""
    views = sidecar.get("views") or {"flip": False, "zoom": 0}
    return with_views(keras.models.load_model(artifacts.KERAS_MODEL), ViewsConfig(**views))


def log(metrics: dict[str, float], details: dict[str, Any], registered: dict) -> None:
    mlflow.log_metrics(metrics)
    mlflow.log_dict(details, "benchmark/details.json")
    mlflow.log_artifact(str(artifacts.LATENCY_CHART), "plots")
    tracking.set_version_tags(registered["name"], registered["version"], {
        Tag.latency_ms: f"{metrics['latency/ms_per_face']:.4f}", Tag.size_kib: f"{metrics['size/kib']:.1f}",
        Tag.machine: machine_name(details["machine"])})
    tracking.describe_version(registered["name"], registered["version"])


def main() -> None:
    params = load_params()
    registered = json.loads(artifacts.REGISTERED.read_text())
    sidecar = read_labels_file(artifacts.TFLITE_LABELS)
    cores = usable_cores()
    with tracking.stage_run("benchmark", params):
        details = benchmark(exported_model(sidecar), sorted(artifacts.TFLITE_DIR.glob("*.tflite")),
                            list(sidecar["labels"]), registered, params.benchmark, cores)
        metrics = flat(details, cores)
        write_json(artifacts.BENCHMARK_DETAILS, details)
        write_json(artifacts.BENCHMARK_METRICS, metrics)
        rows = [(name, v["median_ms"], v["p90_ms"]) for name, v in details["latency"].items()]
        plots.latency_chart(rows, artifacts.LATENCY_CHART, f"Latency on {machine_name(details['machine'])}")
        log(metrics, details, registered)
    for name, v in details["latency"].items():
        print(f"[benchmark] {name:18s} median {v['median_ms']:8.3f} ms   p90 {v['p90_ms']:8.3f} ms")
    print(f"[benchmark] {details['macs_per_face'] / 1e6:.1f} M MACs/face; measured float32 peak "
          f"{details['peak_gmacs']['1']:.1f} GMAC/s (1 thread), float32 model reaches "
          f"{details['share_of_peak_t1']:.0%} of it; "
          + ", ".join(f"{k} {v:.1f}" for k, v in details["achieved_gmacs_t1"].items()) + " GMAC/s")


if __name__ == "__main__":
    cli.run(main, __doc__, "benchmark")
