"""Stage `evaluate`: score the Keras model and every TFLite variant on the test split; promote.

Reads `evaluate` from params.yaml. `evaluate()` (the core) turns each model's test scores into accuracy,
macro-F1, per-class precision/recall/F1, confusion matrix and agreement with Keras (how often a quantized
variant picks the same class), beside a raw-pixel logistic regression on the same splits: the floor any CNN
must clear (tested in-process). `promote()` then tags the registered version with its test metrics and moves
the `champion` alias to it if it beats the current one on `evaluate.promote_metric`, and, for a FER2013 model,
the release model bundled in the package scored on the same test split here: the runner follows the
champion, so a quick run promoted into an empty registry would otherwise replace a better model unseen.

The Keras model is the trained network on one view of each face; the .tflite variants carry the
test-time views of `quantize.views`, so "keras" against "float32" reads as one view against all of them.

The registered variant is also scored on val (`val/exported_accuracy`) unless val was training data
(`train.include_val`): training's `val/accuracy` is one view of the Keras network, and a choice between
finished models (views, ensembles, export) needs the figure of what ships, on a split that is not the test.

Outside DVC it scores any model on any labelled data and prints the same metrics JSON:
    python -m pipeline.evaluate model=models:/fer-expression-fer2013@champion data.path=faces.zip
    python -m pipeline.evaluate model=models/tflite/int8.tflite data.path=fer2013.zip data.usage=PublicTest
    python -m pipeline.evaluate model=models/tflite/int8.tflite split=val
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from pipeline import artifacts, cli
from pipeline.config import EvaluateConfig
from pipeline.inference.classifier import ModelError, TFLiteClassifier, read_labels, read_labels_file, usable_cores
from pipeline.inference.contract import CLASSES, Tag
from pipeline.metrics import recall
from pipeline.splits import PreparedReport, load_split


def present_classes(y_true: np.ndarray) -> list[int]:
    """The class indices that occur in `y_true`: per-class figures and macro-F1 are taken over these."""
    return sorted(int(c) for c in np.unique(y_true))


def score(y_true: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report and confusion matrix for one model's scores.

    Per-class figures and macro-F1 cover the classes present in `y_true`, listed absent ones aside: a class
    with no face has no recall, and averaging it in as 0 made 0.843 over three classes read 0.361. A wrong
    prediction of an absent class still counts against the true class's recall. The confusion matrix keeps
    every class, so its shape never depends on the data.
    """
    y_pred = scores.argmax(axis=1)
    present = present_classes(y_true)
    names = [labels[i] for i in present]
    report = classification_report(y_true, y_pred, labels=present, target_names=names, output_dict=True,
                                   zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {c: {k: float(report[c][k]) for k in ("precision", "recall", "f1-score", "support")}
                      for c in names},
        "absent_classes": [c for i, c in enumerate(labels) if i not in present],
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(len(labels)))).tolist(),
    }


def logreg_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                    samples: int) -> dict[str, float]:
    """Test accuracy and macro-F1 of a raw-pixel logistic regression: the floor that shows the data needs a CNN,
    and below which no model is promoted (`evaluate.floor`).

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
    y_pred = clf.predict(x_test.reshape(len(x_test), -1).astype(np.float32))
    return {"accuracy": float(accuracy_score(y_test, y_pred)),  # macro-F1 over the classes present, as `score`
            "macro_f1": float(f1_score(y_test, y_pred, labels=present_classes(y_test), average="macro",
                                       zero_division=0))}


def floor_value(floor: str, metric: str, baseline: dict[str, float] | None, classes: int) -> float | None:
    """The score a version must beat to be promoted: the baseline's on the same metric, or chance."""
    if floor == "baseline" and baseline is not None:
        return baseline[metric]
    return 1.0 / classes if floor in ("baseline", "chance") else None


def score_models(y_test: np.ndarray, all_scores: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict]:
    """Per model: `score()` plus its agreement with the Keras model's predictions."""
    keras_pred = all_scores["keras"].argmax(axis=1)
    models = {}
    for name, scores in all_scores.items():
        models[name] = score(y_test, scores, labels)
        models[name]["agreement_with_keras"] = float((scores.argmax(axis=1) == keras_pred).mean())
        print(f"[evaluate] {name:8s} accuracy {models[name]['accuracy']:.4f}  macro-F1 "
              f"{models[name]['macro_f1']:.4f}  agreement with Keras {models[name]['agreement_with_keras']:.4f}")
    return models


def labelled_faces(path: Path, usages: set[str] | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Faces and labels of a folder, zip or CSV source, kept to `usages` if given, and what was scored: faces per
    FER2013 usage (train/ is Training; test/ is PublicTest unless a file name says PrivateTest), skipped files.

    A Kaggle folder holds train/ and test/: scoring both at once without saying so reads as a test figure.
    """
    from pipeline.data import DataError, read_csv, read_folder_layout

    csv = path.suffix.lower() == ".csv"
    data = read_csv(path) if csv else read_folder_layout(path)
    found = {u: data.usages.count(u) for u in dict.fromkeys(data.usages)}
    keep = [i for i, u in enumerate(data.usages) if usages is None or u in usages]
    if not keep:
        have = ", ".join(f"{u} {n}" for u, n in found.items()) or "no readable faces"
        raise DataError(f"{path}: no faces of data.usage={','.join(sorted(usages or []))} (it has: {have})")
    scored = {u: n for u, n in found.items() if usages is None or u in usages}
    where = {} if csv else {"Training": " (train/)", "PublicTest": " (test/)", "PrivateTest": " (test/)"}
    text = ", ".join(f"{u} {n}{where.get(u, '')}" for u, n in scored.items())
    what = ("every usage together: data.usage=PublicTest (or Training, PrivateTest) picks some"
            if usages is None and len(found) > 1 else f"data.usage={','.join(sorted(usages))}" if usages else
            "the only usage it holds")
    skipped = f"; {len(data.skipped)} unreadable files skipped" if data.skipped else ""
    info = {"usages": scored, "skipped_files": len(data.skipped),
            "note": f"scored {len(keep)} faces of {path}: {text} ({what}){skipped}"}
    return np.stack([data.images[i] for i in keep]), np.asarray([data.labels[i] for i in keep], np.uint8), info


def standalone_options(args: list[str]) -> dict[str, str]:
    """The scorer's `key=value` arguments, each checked: a bad one is one line naming it."""
    from pipeline.data import USAGES

    options = dict(a.split("=", 1) for a in args if "=" in a)
    allowed = {"model", "data.path", "data.usage", "split", "threads"}
    unknown = set(options) - allowed or {a for a in args if "=" not in a}
    if unknown:
        raise SystemExit(f"error: unknown argument(s) {', '.join(sorted(unknown))} "
                         "(allowed: model=, data.path=, data.usage=, split=, threads=)")
    if options.setdefault("split", "test") not in ("train", "val", "test"):
        raise SystemExit(f"error: split={options['split']}: expected train, val or test")
    if "split" in args_keys(args) and "data.path" in options:
        raise SystemExit("error: give data.path= or split=, not both")
    if "data.usage" in options and set(options["data.usage"].split(",")) - set(USAGES):
        raise SystemExit(f"error: data.usage={options['data.usage']}: expected one or more of {', '.join(USAGES)}, "
                         "comma-separated")
    if "data.usage" in options and "data.path" not in options:
        raise SystemExit("error: data.usage= goes with data.path= (a prepared split= is one usage already)")
    if not options.setdefault("threads", "1").isdigit() or int(options["threads"]) < 1:
        raise SystemExit(f"error: threads={options['threads']}: expected a whole number >= 1")
    return options


def args_keys(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if "=" in a}


def standalone(args: list[str]) -> None:
    """`model=<uri or .tflite> data.path=<folder|zip|csv> [data.usage=PublicTest,...] | split=<train|val|test>`:
    metrics JSON on stdout, nothing written; which faces were scored, and the classes absent from them, on
    stderr and in the JSON. `split=val` compares finished models on the split that recipes are chosen on."""
    from pipeline.data import DataError
    from pipeline.inference.contract import default_tracking_uri
    from pipeline.inference.registry import resolve

    options = standalone_options(args)
    split, threads = options["split"], options["threads"]
    usages = set(options["data.usage"].split(",")) if "data.usage" in options else None
    try:
        resolved = resolve(options.get("model", str(artifacts.tflite_path("int8"))), default_tracking_uri())
        if "data.path" in options:
            x, y, scored = labelled_faces(Path(options["data.path"]), usages)
        else:
            x, y = load_split(split)
            scored = {"note": f"scored the {split} split: {len(y)} faces of {artifacts.split_path(split)}"}
        classifier = TFLiteClassifier(resolved.tflite, resolved.labels, int(threads))
    except (ModelError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    result = {"model": resolved.uri, "version": resolved.version, "data": options.get("data.path", f"{split} split"),
              "n": len(y), "scored": scored, **score(y, classifier.predict(x), resolved.labels)}
    print(f"[evaluate] {scored['note']}", file=sys.stderr)
    if absent := result["absent_classes"]:
        present = [c for c in resolved.labels if c not in absent]
        result["note"] = (f"per-class figures and macro-F1 over the {len(present)} classes present "
                          f"({', '.join(present)}); absent from the data, so not averaged in: {', '.join(absent)}")
        print(f"[evaluate] {result['note']}", file=sys.stderr)
    print(json.dumps(result, indent=2))


def write_plots(y_test: np.ndarray, y_pred: np.ndarray, x_test: np.ndarray, best: dict, variant: str,
                labels: list[str], sample_grid: int) -> None:
    from pipeline import plots
    from pipeline.files import write_text

    plots.confusion_matrix(np.array(best["confusion"]), labels, artifacts.CONFUSION_PNG,
                           f"{variant} on the test split: accuracy {best['accuracy']:.1%}")
    write_text(artifacts.CONFUSION_CSV, "actual,predicted\n" + "".join(
        f"{labels[t]},{labels[p]}\n" for t, p in zip(y_test, y_pred, strict=True)))
    pick = np.random.default_rng(0).permutation(len(y_test))[:sample_grid]
    if len(pick):
        plots.sample_grid(x_test[pick], y_test[pick], y_pred[pick], labels, artifacts.SAMPLES_PNG,
                          f"Test faces: true → predicted by {variant} (red = wrong)")


def flat(models: dict[str, dict], variant: str, baseline: dict[str, float] | None, floor: float | None,
         test_size: int, val: dict[str, Any] | None = None, release: dict[str, Any] | None = None) -> dict[str, float]:
    """metrics/evaluate.json: the registered variant under the plain names, its per-class recall, the other
    variants' accuracy, its val figures if val was held out, the baseline, the floor and the bundled release
    model's figures on the same split when it competed (everything else stays in the details file)."""
    best = models[variant]
    return {
        **({"val/exported_accuracy": val["accuracy"], "val/exported_macro_f1": val["macro_f1"]} if val else {}),
        "test/accuracy": best["accuracy"], "test/macro_f1": best["macro_f1"],
        **{recall(c): v["recall"] for c, v in best["per_class"].items()},
        "test/keras_accuracy": models["keras"]["accuracy"],
        **{f"test/{name}_accuracy": m["accuracy"] for name, m in models.items() if name not in (variant, "keras")},
        "test/faces": test_size,
        **({"baseline/accuracy": baseline["accuracy"], "baseline/macro_f1": baseline["macro_f1"]} if baseline else {}),
        **({"test/promotion_floor": floor} if floor is not None else {}),
        **({"test/release_accuracy": release["accuracy"], "test/release_macro_f1": release["macro_f1"]}
           if release else {}),
    }


def log(metrics: dict[str, float], details: dict[str, Any], registered: dict) -> None:
    import mlflow

    from pipeline import tracking

    decision = details["promotion"]
    mlflow.log_metrics(metrics)
    mlflow.set_tags({"promotion": decision["reason"], "registered_version": registered["version"]})
    mlflow.log_dict(details, "evaluate/details.json")
    for png in (artifacts.CONFUSION_PNG, artifacts.SAMPLES_PNG):
        if png.exists():
            mlflow.log_artifact(str(png), "plots")
    tracking.set_version_tags(registered["name"], registered["version"], {
        Tag.promotion: "champion" if decision["promoted"] else "not promoted",
        Tag.promotion_reason: decision["reason"]})
    tracking.describe_version(registered["name"], registered["version"])


def score_exports(x_test: np.ndarray, y_test: np.ndarray, labels: list[str]) -> tuple[dict[str, dict], dict]:
    """Every model's metrics (`score_models()`) and its scores, the Keras model and each exported .tflite."""
    import keras

    model = keras.models.load_model(artifacts.KERAS_MODEL)
    all_scores = {"keras": model.predict(x_test[..., None].astype(np.float32), batch_size=256, verbose=0)}
    for path in sorted(artifacts.TFLITE_DIR.glob("*.tflite")):
        all_scores[path.stem] = TFLiteClassifier(path, labels, num_threads=usable_cores()).predict(x_test)
    return score_models(y_test, all_scores, labels), all_scores


def score_release(x_test: np.ndarray, y_test: np.ndarray, labels: list[str], trained_on: str | None,
                  test_digest: str) -> dict[str, Any] | None:
    """The bundled release model's `score()` on this test split when it competes with the registered model (the
    same data family: FER2013; a synthetic model has no release rival), else None. Scoring it here, not reading
    its card, makes the comparison hold on any test split; `card_test_split` says whether this split is the one
    its card reports (equal digests)."""
    from pipeline.inference.registry import release_card, release_model

    try:
        release = release_model()
        if release.trained_on != trained_on:
            return None
        classifier = TFLiteClassifier(release.tflite, release.labels, usable_cores())
    except ModelError as e:
        print(f"[evaluate] no bundled release model to compare with: {e}")
        return None
    if release.labels != labels:
        print(f"[evaluate] the bundled release model's labels {release.labels} differ from {labels}; not compared")
        return None
    result = score(y_test, classifier.predict(x_test), labels)
    card_digest = (release_card().get("data") or {}).get("test_digest")
    same = card_digest == test_digest
    print(f"[evaluate] the bundled release model {release.uri} on this test split: accuracy "
          f"{result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}" + ("" if same else
          " (not the split its card reports; it learned from FER2013 Training, so a split holding Training faces "
          "flatters it)"))
    return {"model": release.uri, "card_test_split": same, **result}


def score_on_val(variant: str, labels: list[str]) -> dict[str, Any] | None:
    """`score()` of the exported `variant` on the val split (None when the split is empty)."""
    x_val, y_val = load_split("val")
    if not len(y_val):
        return None
    val = score(y_val, TFLiteClassifier(artifacts.tflite_path(variant), labels, usable_cores()).predict(x_val),
                labels)
    print(f"[evaluate] {variant} on val ({len(y_val)} faces, all views): accuracy {val['accuracy']:.4f}, "
          f"macro-F1 {val['macro_f1']:.4f}")
    return val


@dataclass
class Evaluation:
    """What the stage measured, before anything is decided or written: every model on the test split, the
    floor and the bundled release model it must beat, and what ships scored on val."""

    variant: str
    models: dict[str, dict]
    predicted: np.ndarray  # the registered variant's classes on the test split (for the plots)
    baseline: dict[str, float] | None
    floor: float | None
    release: dict[str, Any] | None
    val: dict[str, Any] | None


def evaluate(cfg: EvaluateConfig, variant: str, labels: list[str], report: PreparedReport,
             val_held_out: bool) -> Evaluation:
    """Score the Keras model and every export on the test split, beside the raw-pixel baseline and (for a
    FER2013 model) the bundled release model; the registered `variant` on val too when val was held out."""
    x_test, y_test = load_split("test")
    models, all_scores = score_exports(x_test, y_test, labels)
    if absent := models[variant]["absent_classes"]:
        print(f"[evaluate] the test split has no faces of {', '.join(absent)}: per-class "
              f"figures and macro-F1 are over the {len(labels) - len(absent)} classes present")
    baseline = logreg_baseline(*load_split("train"), x_test, y_test, cfg.baseline_samples) \
        if cfg.baseline_samples else None
    if baseline:
        print(f"[evaluate] raw-pixel logistic regression baseline: accuracy {baseline['accuracy']:.4f}, "
              f"macro-F1 {baseline['macro_f1']:.4f}")
    trained_on = read_labels_file(artifacts.TFLITE_LABELS).get("trained_on")
    return Evaluation(
        variant, models, all_scores[variant].argmax(axis=1), baseline,
        floor_value(str(cfg.floor), str(cfg.promote_metric), baseline, len(labels)),
        score_release(x_test, y_test, labels, trained_on, report.digests["test"]),
        score_on_val(variant, labels) if val_held_out else None)


def promote(result: Evaluation, registered: dict, cfg: EvaluateConfig, test_digest: str) -> dict[str, Any]:
    """Tag the registered version with its test figures (and the release model's beside them) and move
    `champion` to it if it beats the champion, the floor and the release model; the decision with its reason."""
    from pipeline import tracking

    best, rival, metric = result.models[result.variant], result.release, str(cfg.promote_metric)
    tracking.set_version_tags(registered["name"], registered["version"], {
        Tag.test_accuracy: best["accuracy"], Tag.test_macro_f1: best["macro_f1"],
        **({Tag.release_model: rival["model"], Tag.release_test_accuracy: rival["accuracy"],
            Tag.release_test_macro_f1: rival["macro_f1"]} if rival else {})})
    decision = tracking.promote(registered["name"], registered["version"], metric, best[metric], test_digest,
                                str(cfg.new_test_split), result.floor,
                                (rival["model"], rival[metric]) if rival else None)
    print(f"[evaluate] promotion of {registered['name']} v{registered['version']}: "
          f"{'promoted to' if decision['promoted'] else 'not'} champion ({decision['reason']})")
    return decision


def details(result: Evaluation, report: PreparedReport, registered: dict, decision: dict) -> dict[str, Any]:
    return {"variant": result.variant, "protocol": report.protocol, "test_split": report.mapping["test"],
            "test_size": len(result.predicted), "test_digest": report.digests["test"],
            "baseline_logreg": result.baseline, "promotion_floor": result.floor,
            "registered": {k: registered[k] for k in ("name", "version", "run_id")},
            "promotion": decision, "models": result.models, "val": result.val, "release_model": result.release}


def main() -> None:
    if len(sys.argv) > 1:
        standalone(sys.argv[1:])
        return
    from pipeline import tracking
    from pipeline.config import load_params
    from pipeline.files import read_run_record, write_json
    from pipeline.splits import read_report

    params, report = load_params(), read_report()
    registered = json.loads(artifacts.REGISTERED.read_text())
    labels = read_labels(artifacts.TFLITE_LABELS)
    if labels != list(CLASSES):
        raise SystemExit(f"error: {artifacts.TFLITE_LABELS}: labels {labels} differ from the canonical {CLASSES}")
    with tracking.stage_run("evaluate", params):
        result = evaluate(params.evaluate, registered["variant"], labels, report, not params.train.include_val)
        decision = promote(result, registered, params.evaluate, report.digests["test"])
        x_test, y_test = load_split("test")
        write_plots(y_test, result.predicted, x_test, result.models[result.variant], result.variant, labels,
                    params.evaluate.sample_grid)
        metrics = flat(result.models, result.variant, result.baseline, result.floor, len(y_test), result.val,
                       result.release)
        recorded = details(result, report, registered, decision)
        write_json(artifacts.EVALUATE_DETAILS, recorded)
        write_json(artifacts.EVALUATE_METRICS, metrics)
        log(metrics, recorded, registered)
    experiment_id = read_run_record("evaluate")["experiment_id"]
    print(f"[evaluate] {tracking.links(params.mlflow, experiment_id, registered['name'])}")


if __name__ == "__main__":
    cli.run(main, __doc__, "evaluate")
