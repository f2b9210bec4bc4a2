"""Stage `evaluate`: score the Keras model and every TFLite variant on the test split; promote.

Reads `evaluate`. For each model: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix and
agreement with Keras (how often the quantized variant picks the same class). A raw-pixel logistic
regression on the same splits is the floor any CNN must clear. Then the registered version gets its test
metrics as tags and takes the `champion` alias if it beats the current one on `evaluate.promote_metric`.

Outside DVC it scores any model on any labelled data and prints the same metrics JSON:
    python -m pipeline.evaluate model=models:/fer-expression-fer2013@champion data.path=faces.zip
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from pipeline.config import CLASSES
from pipeline.files import load_split
from pipeline.prepare import OUT_DIR as PREPARED

METRICS_PATH = Path("metrics/evaluate.json")
PLOTS_DIR = Path("plots/evaluate")


def score(y_true: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion matrix for one model's scores."""
    y_pred = scores.argmax(axis=1)
    idx = list(range(len(labels)))
    report = classification_report(y_true, y_pred, labels=idx, target_names=labels, output_dict=True,
                                   zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {c: {k: float(report[c][k]) for k in ("precision", "recall", "f1-score", "support")}
                      for c in labels},
        "confusion": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
    }


def logreg_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                    samples: int) -> float:
    """Test accuracy of a raw-pixel logistic regression: the floor that shows the data needs a CNN.

    Standardised pixels and a strong L2 penalty converge in ~100 iterations; the cap keeps this stage
    quick, and a few more iterations move the score by well under a point.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.random.default_rng(0).permutation(len(x_train))[:samples]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train[keep].reshape(len(keep), -1).astype(np.float32), y_train[keep])
    return float(clf.score(x_test.reshape(len(x_test), -1).astype(np.float32), y_test))


def standalone(args: list[str]) -> None:
    """`model=<uri or .tflite> data.path=<folder|zip|csv>`: metrics JSON on stdout, nothing written."""
    from pipeline.data import DataError, read_labelled
    from pipeline.runtime import ModelError, TFLiteClassifier, resolve_model

    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(options) - {"model", "data.path", "threads"} or {a for a in args if "=" not in a}
    if unknown:
        raise SystemExit(f"error: unknown argument(s) {', '.join(sorted(unknown))} "
                         "(allowed: model=, data.path=, threads=)")
    try:
        resolved = resolve_model(options.get("model", "models/tflite/int8.tflite"))
        if "data.path" in options:
            x, y = read_labelled(Path(options["data.path"]))
        else:
            x, y = load_split(PREPARED / "test.npz")
        classifier = TFLiteClassifier(resolved.tflite, resolved.labels, int(options.get("threads", 1)))
    except (ModelError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    result = {"model": resolved.uri, "version": resolved.version, "data": options.get("data.path", "test split"),
              "n": len(y), **score(y, classifier.predict(x), resolved.labels)}
    print(json.dumps(result, indent=2))


def main() -> None:
    if len(sys.argv) > 1:
        standalone(sys.argv[1:])
        return
    import keras
    import mlflow

    from pipeline import plots, tracking
    from pipeline.config import load_params
    from pipeline.files import write_json, write_text
    from pipeline.quantize import REGISTERED_PATH, TFLITE_DIR
    from pipeline.runtime import LABELS_FILE, TFLiteClassifier, default_threads, read_labels
    from pipeline.train import MODEL_PATH

    params = load_params()
    cfg = params.evaluate
    x_test, y_test = load_split(PREPARED / "test.npz")
    report = json.loads((PREPARED / "report.json").read_text())
    registered = json.loads(REGISTERED_PATH.read_text())
    labels = read_labels(TFLITE_DIR / LABELS_FILE)
    if labels != list(CLASSES):
        raise SystemExit(f"error: {TFLITE_DIR / LABELS_FILE}: labels {labels} differ from the canonical {CLASSES}")

    with tracking.stage_run("evaluate", params, upstream="quantize"):
        model = keras.models.load_model(MODEL_PATH)
        all_scores = {"keras": model.predict(x_test[..., None].astype(np.float32), batch_size=256, verbose=0)}
        for path in sorted(TFLITE_DIR.glob("*.tflite")):
            all_scores[path.stem] = TFLiteClassifier(path, labels, num_threads=default_threads()).predict(x_test)
        keras_pred = all_scores["keras"].argmax(axis=1)
        models = {}
        for name, scores in all_scores.items():
            models[name] = score(y_test, scores, labels)
            models[name]["agreement_with_keras"] = float((scores.argmax(axis=1) == keras_pred).mean())
            print(f"[evaluate] {name:8s} accuracy {models[name]['accuracy']:.4f}  macro-F1 "
                  f"{models[name]['macro_f1']:.4f}  agreement with Keras {models[name]['agreement_with_keras']:.4f}")

        variant = registered["variant"]
        best = models[variant]
        baseline = None
        if cfg.baseline_samples:
            x_train, y_train = load_split(PREPARED / "train.npz")
            baseline = logreg_baseline(x_train, y_train, x_test, y_test, cfg.baseline_samples)
            print(f"[evaluate] raw-pixel logistic regression baseline: {baseline:.4f}")

        tracking.set_version_tags(registered["name"], registered["version"], {
            "test_accuracy": best["accuracy"], "test_macro_f1": best["macro_f1"]})
        decision = tracking.promote(registered["name"], registered["version"], str(cfg.promote_metric),
                                    best[str(cfg.promote_metric)], report["digests"]["test"],
                                    str(cfg.new_test_split))
        print(f"[evaluate] promotion of {registered['name']} v{registered['version']}: "
              f"{'promoted to' if decision['promoted'] else 'not'} champion ({decision['reason']})")

        y_pred = all_scores[variant].argmax(axis=1)
        plots.confusion_matrix(np.array(best["confusion"]), labels, PLOTS_DIR / "confusion.png",
                               f"{variant} on the test split: accuracy {best['accuracy']:.1%}")
        write_text(PLOTS_DIR / "confusion.csv", "actual,predicted\n" + "".join(
            f"{labels[t]},{labels[p]}\n" for t, p in zip(y_test, y_pred, strict=True)))
        pick = np.random.default_rng(0).permutation(len(y_test))[: cfg.sample_grid]
        if len(pick):
            plots.sample_grid(x_test[pick], y_test[pick], y_pred[pick], labels, PLOTS_DIR / "samples.png",
                              f"Test faces: true → predicted by {variant} (red = wrong)")
        metrics = {
            "accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "variant": variant,
            "protocol": report["protocol"], "test_split": report["mapping"]["test"], "test_size": len(y_test),
            "test_digest": report["digests"]["test"], "baseline_logreg_accuracy": baseline,
            "registered": {k: registered[k] for k in ("name", "version", "run_id")},
            "promotion": decision, "models": models,
        }
        write_json(METRICS_PATH, metrics)
        for name, m in models.items():
            mlflow.log_metrics({f"test_accuracy_{name}": m["accuracy"], f"test_macro_f1_{name}": m["macro_f1"],
                                f"agreement_{name}": m["agreement_with_keras"]})
        mlflow.log_metrics({"test_accuracy": best["accuracy"], "test_macro_f1": best["macro_f1"]}
                           | ({"baseline_logreg_accuracy": baseline} if baseline is not None else {}))
        mlflow.set_tags({"promotion": decision["reason"], "registered_version": registered["version"]})
        mlflow.log_dict(metrics, "evaluate/evaluate.json")
        for png in PLOTS_DIR.glob("*.png"):
            mlflow.log_artifact(str(png), "plots")


if __name__ == "__main__":
    main()
