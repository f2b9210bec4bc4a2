"""Stage `benchmark`: per-face latency of the Keras model and every TFLite variant, sizes, a real frame.

Reads `benchmark`. Per face (batch 1): Keras as `model(x, training=False)` and as `model.predict(x)`
(the seed project's 68 ms was the latter, mostly call overhead); each .tflite in LiteRT as
set_tensor/invoke/get_tensor at 1 thread and at all cores. End to end: a 640x480 frame holding a real
face photo, face detection + crop + classification with the registered variant; no face found is an
error, because a benchmark that classifies nothing measures nothing. The MACs of the model and the
machine's measured compute peak turn the latency into a share of what this CPU can do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np

from pipeline import plots, tracking
from pipeline.config import load_params
from pipeline.faces import crop_face, make_detector
from pipeline.files import write_json
from pipeline.models import count_macs
from pipeline.quantize import REGISTERED_PATH, TFLITE_DIR
from pipeline.runtime import LABELS_FILE, TFLiteClassifier, read_labels
from pipeline.timing import compute_peak_gmacs, machine, time_calls
from pipeline.train import MODEL_PATH

METRICS_PATH = Path("metrics/benchmark.json")
CHART_PATH = Path("plots/benchmark/latency.png")
PHOTO = Path(__file__).parent / "assets" / "astronaut.jpg"


def test_frame(face_px: int = 200) -> np.ndarray:
    """A 640x480 BGR frame with the public-domain astronaut portrait scaled so her face is ~`face_px`."""
    photo = cv2.imread(str(PHOTO))
    if photo is None:
        raise SystemExit(f"error: {PHOTO}: missing or unreadable (the benchmark's real face photo)")
    side = int(512 * face_px / 94)  # the face spans ~94 px of the 512 px photo
    side = min(side, 480)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[(480 - side) // 2:(480 - side) // 2 + side, (640 - side) // 2:(640 - side) // 2 + side] = cv2.resize(
        photo, (side, side), interpolation=cv2.INTER_AREA)
    return frame


def main() -> None:
    params = load_params()
    cfg = params.benchmark
    registered = json.loads(REGISTERED_PATH.read_text())
    labels = read_labels(TFLITE_DIR / LABELS_FILE)
    face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    cores = os.cpu_count() or 1

    with tracking.stage_run("benchmark", params, upstream="quantize"):
        print("[benchmark] measuring this machine's float32 peak ...")
        peak = {"1": compute_peak_gmacs(1), str(cores): compute_peak_gmacs(cores)}
        model = keras.models.load_model(MODEL_PATH)
        macs = count_macs(model)
        x = face[None, :, :, None].astype(np.float32)
        latency: dict[str, dict[str, float]] = {
            "keras_call": time_calls(lambda: model(x, training=False), cfg.keras_runs, min(cfg.warmup, 10)),
            "keras_predict": time_calls(lambda: model.predict(x, verbose=0), cfg.keras_runs, min(cfg.warmup, 10)),
        }
        sizes = {"keras": MODEL_PATH.stat().st_size}
        for path in sorted(TFLITE_DIR.glob("*.tflite")):
            sizes[path.stem] = path.stat().st_size
            for threads in sorted({1, cores}):
                clf = TFLiteClassifier(path, labels, num_threads=threads)
                latency[f"{path.stem}_t{threads}"] = time_calls(lambda c=clf: c.predict_one(face), cfg.runs,
                                                                cfg.warmup)

        detector = make_detector(cfg.detector)
        classifier = TFLiteClassifier(registered["tflite"], labels, num_threads=1)
        frame = test_frame()
        faces = detector.detect(frame)
        if not faces:
            raise SystemExit(f"error: {cfg.detector} found no face in the benchmark frame ({PHOTO})")

        def end_to_end() -> None:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            for f in detector.detect(frame):
                classifier.predict_one(crop_face(gray, f))

        latency["frame_detect"] = time_calls(lambda: detector.detect(frame), cfg.runs, cfg.warmup)
        latency["frame_end_to_end"] = time_calls(end_to_end, cfg.runs, cfg.warmup)

        variant_t1 = latency[f"{registered['variant']}_t1"]["median_ms"]
        # Achieved GMAC/s per variant at 1 thread. The peak is float32 FMA; int8 can exceed it on CPUs with
        # VNNI (4 int8 MACs per lane), so only the float32 variant's share reads as "how close to the floor".
        achieved = {name.removesuffix("_t1"): macs / (v["median_ms"] / 1e3) / 1e9
                    for name, v in latency.items() if name.endswith("_t1")}
        metrics = {
            "machine": machine(), "macs_per_face": macs, "peak_gmacs": peak,
            "registered_variant": registered["variant"], "detector": cfg.detector,
            "latency": latency, "size_bytes": sizes,
            "registered_latency_ms_t1": variant_t1,
            "achieved_gmacs_t1": achieved,
            "share_of_peak_t1": achieved.get("float32", 0.0) / peak["1"],
            "frame_end_to_end_ms": latency["frame_end_to_end"]["median_ms"],
        }
        write_json(METRICS_PATH, metrics)
        rows = [(name, v["median_ms"], v["p90_ms"]) for name, v in latency.items()]
        plots.latency_chart(rows, CHART_PATH, f"Latency on {metrics['machine']['cpu']} ({cores} cores)")
        mlflow.log_metrics({f"latency_ms_{k}": v["median_ms"] for k, v in latency.items()})
        mlflow.log_metrics({f"size_bytes_{k}": v for k, v in sizes.items()})
        mlflow.log_metrics({"macs_per_face": macs, "share_of_peak_t1": metrics["share_of_peak_t1"],
                            "peak_gmacs_t1": peak["1"],
                            "latency_ms": variant_t1, "frame_end_to_end_ms": metrics["frame_end_to_end_ms"]})
        mlflow.log_dict(metrics, "benchmark/benchmark.json")
        mlflow.log_artifact(str(CHART_PATH), "plots")
    for name, v in latency.items():
        print(f"[benchmark] {name:18s} median {v['median_ms']:8.3f} ms   p90 {v['p90_ms']:8.3f} ms")
    print(f"[benchmark] {macs / 1e6:.1f} M MACs/face; measured float32 peak {peak['1']:.1f} GMAC/s (1 thread), "
          f"float32 model reaches {metrics['share_of_peak_t1']:.0%} of it; "
          + ", ".join(f"{k} {v:.1f}" for k, v in achieved.items()) + " GMAC/s")


if __name__ == "__main__":
    main()
