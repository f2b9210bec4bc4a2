"""Stage `train`: the prepared train and val splits -> models/model.keras, its history and metrics/train.json.

Reads `model` and `train` from params.yaml. `train()` is the whole computation on arrays (tested in-process),
`train_members()` the same for an ensemble of `train.members` networks; `main()` reads the inputs, calls it
inside the stage's MLflow run and writes the outputs.

A checkpoint is written every epoch under `models/checkpoints/<hash of data + model + train params>/`
(a `persist: true` DVC output): an interrupted run resumes from it, and a checkpoint made with other
params or data is never resumed (its folder is deleted). An ensemble keeps one folder per member in it, and
a finished member's network there, so an interruption costs at most the member in training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline import artifacts, cli, plots, tracking
from pipeline.config import DistillConfig, Distribute, ModelConfig, Params, TrainConfig, ViewsConfig, load_params
from pipeline.files import atomic_path, write_json
from pipeline.fitting import (
    AtomicBackupAndRestore,
    Diverged,
    EpochLog,
    MetricsLogger,
    MultiWorkerStrategy,
    SignalsAtSafePoints,
    StopOnNonFiniteLoss,
    TimeBudget,
    class_weights,
    compile_for_training,
    distillation_targets,
    early_stopping,
    epochs_trained,
    float32_copy,
    lr_schedule,
    make_dataset,
    onednn_enabled,
    resolve_precision,
    set_aside,
    sharpness_aware,
    usable_backup,
    worker_checkpoint,
)
from pipeline.history import read_history, write_history
from pipeline.inference.contract import CLASSES
from pipeline.models import build_model, count_macs, ensemble, with_views
from pipeline.splits import PreparedReport, load_split, read_report
from pipeline.timing import cpu_info, machine, machine_name

Split = tuple[np.ndarray, np.ndarray]


@dataclass
class TrainResult:
    model: keras.Model  # float32, with the weights of the best validation epoch when `keep_best`
    history: list[dict[str, float]]  # one row per epoch, across resumes
    metrics: dict[str, float]  # flat, named as in pipeline/metrics.py: metrics/train.json and MLflow
    how: dict[str, str]  # how it ran (precision, oneDNN): MLflow tags, not metrics


def checkpoint_dir(params: Params, report: PreparedReport) -> Path:
    """A folder keyed by everything that shapes the weights (data, model, train params), so a stale
    checkpoint can't be resumed; other checkpoints are deleted (fitted teachers have their own folder)."""
    key = json.dumps({"data": report.digests, "model": str(params.model), "train": str(params.train)},
                     sort_keys=True)
    return _only_folder(artifacts.CHECKPOINTS, hashlib.sha256(key.encode()).hexdigest()[:16],
                        keep=artifacts.FITTED_TEACHERS)


def fitted_teachers_dir(cfg: TrainConfig, report: PreparedReport) -> Path:
    """Where `train.distill.fit`'s teachers are trained and kept, keyed by what shapes them (the data, their
    model, seeds and time, the train settings they share with the student) and not by the student's own model,
    distillation weight or temperature: those can be tried again without hours of teachers. Kept after the run
    finishes; folders of other teachers are deleted."""
    key = json.dumps({"data": report.digests, "train": str(teacher_config(cfg))}, sort_keys=True)
    return _only_folder(artifacts.FITTED_TEACHERS, hashlib.sha256(key.encode()).hexdigest()[:16])


def _only_folder(parent: Path, name: str, keep: Path | None = None) -> Path:
    path = parent / name
    for other in parent.iterdir() if parent.exists() else []:
        if other not in (path, keep):
            print(f"[train] removing stale checkpoint {other} (made with other params or data)")
            shutil.rmtree(other, ignore_errors=True)
    return path


def strategy_for(cfg: TrainConfig) -> tuple[tf.distribute.Strategy, str]:
    """Seeds, determinism and precision for this process; the strategy to build under and the precision used."""
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = resolve_precision(str(cfg.precision), cpu_info()[1])
    keras.mixed_precision.set_global_policy(precision)
    if cfg.distribute == Distribute.multi_worker:  # one replica per process listed in TF_CONFIG
        return MultiWorkerStrategy(), precision
    if cfg.distribute == Distribute.mirrored:  # every GPU, else every logical CPU device of this process
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), precision
    return tf.distribute.get_strategy(), precision


def fitted_data(cfg: TrainConfig, train_split: Split, val_split: Split,
                teacher_scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The faces, labels and (when distilling) soft targets that `fit` trains on."""
    x_train, y_train = train_split
    if cfg.include_val:  # the recipe was chosen on val earlier; now val is more training data
        x_train, y_train = np.concatenate([x_train, val_split[0]]), np.concatenate([y_train, val_split[1]])
    targets = (None if teacher_scores is None else
               distillation_targets(y_train, teacher_scores, cfg.distill.weight, cfg.distill.temperature))
    if cfg.max_train_samples:
        x_train, y_train = x_train[: cfg.max_train_samples], y_train[: cfg.max_train_samples]
        targets = None if targets is None else targets[: cfg.max_train_samples]
    return x_train, y_train, targets


def callbacks_for(cfg: TrainConfig, progress: EpochLog, checkpoint: Path, steps: int,
                  spent: float) -> list[keras.callbacks.Callback]:
    """First, at every batch, a non-finite loss fails the stage (`StopOnNonFiniteLoss`), so no NaN epoch is
    logged or backed up. Then in this order at each epoch's end: EpochLog adds the training seconds so far to
    the logs, the CSV records them, and only then the backup is taken. A kill between the two leaves a CSV row
    ahead of the backup (the epoch reruns and its last row wins), never a backup ahead of the CSV."""
    callbacks = [StopOnNonFiniteLoss(cfg), progress,
                 keras.callbacks.CSVLogger(str(checkpoint / "history.csv"), append=True),
                 AtomicBackupAndRestore(str(checkpoint / "backup"), double_checkpoint=True)]
    if cfg.time_budget_min:
        callbacks.append(TimeBudget(lr_schedule(cfg, steps), cfg.epochs * steps, cfg.time_budget_min, spent))
        print(f"[train] time budget {cfg.time_budget_min:g} min ({spent / 60:.1f} spent): at most {cfg.epochs} "
              "epochs, the learning-rate schedule paced to end on time")
    if cfg.early_stopping_patience or cfg.keep_best:
        callbacks.append(early_stopping(cfg))
    return callbacks


def resume_point(checkpoint: Path, log: MetricsLogger | None) -> list[dict[str, float]]:
    """The epochs a checkpoint holds (replayed into `log`): the history up to the last readable backup, after
    a damaged one is set aside; [] to start from scratch."""
    backed_up = usable_backup(checkpoint / "backup", checkpoint / "unreadable")
    resumed = [row for row in read_history(checkpoint / "history.csv") if row["epoch"] <= backed_up]
    if resumed:  # rows past the backup are trained again
        print(f"[train] resuming after epoch {resumed[-1]['epoch']} from {checkpoint}")
        replay(resumed, log)
    return resumed


def train(model_cfg: ModelConfig, cfg: TrainConfig, train_split: Split, val_split: Split, checkpoint: Path,
          log: MetricsLogger | None = None, teacher_scores: np.ndarray | None = None) -> TrainResult:
    """Train (or resume from `checkpoint`) and return the model, its history and the val metrics.

    `teacher_scores` [N, 7] are the teachers' scores on the training faces (see `train.distill`).
    """
    strategy, precision = strategy_for(cfg)
    checkpoint = worker_checkpoint(checkpoint, strategy)  # multi-worker: only the chief writes to `checkpoint`
    x_train, y_train, targets = fitted_data(cfg, train_split, val_split, teacher_scores)
    x_val, y_val = val_split
    checkpoint.mkdir(parents=True, exist_ok=True)
    csv_log = checkpoint / "history.csv"
    steps = math.ceil(len(x_train) / cfg.batch_size)
    with strategy.scope():
        model = sharpness_aware(build_model(model_cfg), cfg.sam_rho)
        compile_for_training(model, cfg, steps)
    macs = count_macs(model)
    print(f"[train] {model_cfg.name}: {model.count_params():,} parameters, {macs / 1e6:.1f} M MACs/face; "
          f"{len(x_train)} train {'(val included)' if cfg.include_val else f'/ {len(x_val)} val'} images, "
          f"{cfg.epochs} epochs")
    resumed = resume_point(checkpoint, log)
    spent = resumed[-1].get("train_s", 0.0) if resumed else 0.0
    done = int(resumed[-1]["epoch"]) if resumed else 0  # a resumed run draws a fresh random stream
    progress = EpochLog(cfg.epochs, len(x_train), cfg.batch_size, spent, log)
    callbacks = callbacks_for(cfg, progress, checkpoint, steps, spent)
    start = time.perf_counter()
    with SignalsAtSafePoints() as safe_points, contextlib.closing(progress):  # no bar left behind on an error
        model.fit(make_dataset(x_train, y_train, cfg, training=True, targets=targets, epochs_done=done),
                  epochs=cfg.epochs, verbose=0, shuffle=False,
                  validation_data=None if cfg.include_val else make_dataset(x_val, y_val, cfg, training=False),
                  class_weight=class_weights(y_train, cfg.class_weight), callbacks=[*callbacks, safe_points])
    seconds = spent + time.perf_counter() - start
    if precision != "float32" or cfg.sam_rho:  # export a plain float32 graph, as the converter and LiteRT want
        model = float32_copy(model, model_cfg)
    history = read_history(csv_log)
    metrics = {} if cfg.include_val else val_metrics(model, val_split, history)  # val was fitted: no val figure
    metrics |= {
        "train/epochs": epochs_trained(history), "train/minutes": seconds / 60,
        "train/images_per_s": progress.typical_images_per_s(),
        "model/params": int(model.count_params()), "model/macs_per_view": macs,
    }
    held_out = ("no held-out val accuracy (train.include_val: val was training data)" if cfg.include_val
                else f"val accuracy {metrics['val/accuracy']:.4f}")
    print(f"[train] {held_out} after {epochs_trained(history):g} epochs in {seconds:.0f}s")
    return TrainResult(model, history, metrics, how_trained(precision))


def how_trained(precision: str) -> dict[str, str]:
    """Tags for what the speed depended on: images/s and the epochs reached belong to this host."""
    return {"train.precision": precision, "train.onednn": str(onednn_enabled()).lower(),
            "train.machine": machine_name(machine())}


def train_members(model_cfg: ModelConfig, cfg: TrainConfig, train_split: Split, val_split: Split, checkpoint: Path,
                  log: MetricsLogger | None = None, teacher_scores: np.ndarray | None = None,
                  keep: bool = False) -> TrainResult:
    """`train.members` networks, one after another, each from its own seed (`seed`, `seed` + 1, ...) for an
    equal share of the time budget, averaged into one model; `train()` itself for one member.

    Why: a network trained longer on FER2013 overfits (the long preset's wider network ended at 84 % training
    accuracy against 67 % on val), while networks from different seeds make partly different mistakes, which
    their average cancels. Each member's epochs are logged after the previous member's, so MLflow's curves show
    the members in turn. A finished member's network is kept in its checkpoint folder and not trained again.
    """
    if cfg.members == 1:
        return train(model_cfg, cfg, train_split, val_split, checkpoint, log, teacher_scores)
    results: list[TrainResult] = []
    history: list[dict[str, float]] = []  # the members' epochs one after another
    for i in range(1, cfg.members + 1):
        member_cfg = replace(cfg, members=1, seed=cfg.seed + i - 1, time_budget_min=cfg.time_budget_min / cfg.members)
        folder, offset = checkpoint / f"member{i}", len(history)
        member_log = None if log is None else (lambda m, step, offset=offset: log(m, step + offset))
        print(f"[train] member {i} of {cfg.members}, seed {member_cfg.seed}")
        result = finished_member(folder, member_log)
        if result is None:
            result = train(model_cfg, member_cfg, train_split, val_split, folder, member_log, teacher_scores)
            keep_member(result, folder)
        results.append(result)
        history += [dict(row, epoch=row["epoch"] + offset) for row in result.history]
    model = ensemble([r.model for r in results])
    metrics = {} if cfg.include_val else val_metrics(model, val_split, history)
    metrics |= {
        "train/epochs": epochs_trained(history), "train/minutes": sum(r.metrics["train/minutes"] for r in results),
        "train/images_per_s": float(np.median([r.metrics["train/images_per_s"] for r in results])),
        "train/members": cfg.members, "model/params": int(model.count_params()),
        "model/macs_per_view": sum(r.metrics["model/macs_per_view"] for r in results),
    }
    if not cfg.include_val:  # each member's own figure beside the average's: the ensemble's gain, on val
        metrics |= {f"val/member{i}_accuracy": r.metrics["val/accuracy"] for i, r in enumerate(results, 1)}
        print(f"[train] the {cfg.members} members averaged: val accuracy {metrics['val/accuracy']:.4f} (each: "
              + ", ".join(f"{r.metrics['val/accuracy']:.4f}" for r in results) + ")")
    return TrainResult(model, history, metrics, results[-1].how)


def keep_member(result: TrainResult, folder: Path) -> None:
    """A finished member's network and figures, the JSON last: a member is finished only when both are there."""
    with atomic_path(folder / "member.keras") as tmp:
        result.model.save(tmp)
    write_json(folder / "member.json", {"metrics": result.metrics, "how": result.how})


def finished_member(folder: Path, log: MetricsLogger | None) -> TrainResult | None:
    """The member trained in `folder` by an earlier, interrupted run (its epochs logged again), or None."""
    if not (folder / "member.json").exists():
        return None
    try:
        kept = json.loads((folder / "member.json").read_text())
        model = keras.models.load_model(folder / "member.keras")
    except Exception as e:  # a damaged disk or a hand edit: train the member again rather than fail
        files = [folder / name for name in ("member.json", "member.keras", "history.csv")]
        aside = set_aside(files, folder / "unreadable")
        print(f"[train] finished member in {folder} unreadable ({(str(e).strip().splitlines() or [''])[0][:160]}): "
              f"set aside in {aside}; training it again", flush=True)
        return None
    history = read_history(folder / "history.csv")
    replay(history, log)
    print(f"[train] finished earlier: {len(history)} epochs, taken from {folder}")
    return TrainResult(model, history, kept["metrics"], kept["how"])


def replay(history: list[dict[str, float]], log: MetricsLogger | None) -> None:
    """Log epochs trained by an earlier, interrupted process again, so the run's curves are whole."""
    for row in history if log else []:
        log({k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))


def val_metrics(model: keras.Model, val_split: Split, history: list[dict[str, float]]) -> dict[str, float]:
    """The exported model's accuracy and loss on val, the figures a recipe is chosen by."""
    x_val, y_val = val_split
    scores = model.predict(x_val[..., None].astype(np.float32), batch_size=256, verbose=0)
    return {
        "val/accuracy": float((scores.argmax(axis=1) == y_val).mean()),
        "val/loss": float(keras.losses.categorical_crossentropy(tf.one_hot(y_val, len(CLASSES)), scores)
                          .numpy().mean()),
        "val/best_epoch_accuracy": max(r.get("val_accuracy", 0.0) for r in history),
    }


def teacher_scores(teachers: list[str], faces: np.ndarray, tracking_uri: str,
                   teachers_dir: Path = artifacts.TEACHERS_DIR, what: str = "training faces",
                   cache: Path | None = None) -> np.ndarray:
    """The teachers' averaged scores on `faces` (LiteRT): registered and committed ones sha256-checked, the
    bundled release only if it is still the one the config names.

    With `cache` (a file in the run's checkpoint folder), the scores are kept there with the teachers' sha256
    and the faces' digest, so that a resumed distillation does not score every face again: three teachers of
    320 M MACs took 3 minutes per start on Intel AMX and 11 on an AVX2-only Zen 3 (cores partly shared),
    before the first epoch.
    """
    from pipeline.inference.classifier import ModelError, TFLiteClassifier, usable_cores
    from pipeline.inference.registry import sha256_of, teacher

    try:
        models = [teacher(uri, tracking_uri, teachers_dir) for uri in teachers]
    except ModelError as e:
        raise SystemExit(f"error: train.distill.teachers: {e}") from None
    key = np.array([sha256_of(m.tflite) for m in models] + [hashlib.sha256(faces.tobytes()).hexdigest()])

    def score() -> np.ndarray:
        scores = []
        for uri, model in zip(teachers, models, strict=True):
            print(f"[train] teacher {uri}: scoring {len(faces)} {what}")
            scores.append(TFLiteClassifier(model.tflite, model.labels, usable_cores()).predict(faces))
        return np.mean(scores, axis=0)

    return cached(cache, key, len(faces), what, score)


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    """The train settings of `train.distill.fit`'s teachers: the student's, with the fit's model, seeds and time,
    as an ensemble of `count` members, and no distillation of their own."""
    fit = cfg.distill.fit  # kept in `distill` with what does not shape the teachers zeroed: a folder's key
    plain = DistillConfig(teachers=[], weight=0.0, temperature=1.0, fit=replace(
        fit, count=0, seed=0, time_budget_min=0.0, views=ViewsConfig(flip=False, zoom=0)))
    return replace(cfg, members=fit.count, seed=fit.seed, time_budget_min=fit.time_budget_min * fit.count,
                   distill=plain)


def fit_teachers(cfg: TrainConfig, train_split: Split, val_split: Split, folder: Path,
                 log: MetricsLogger | None = None) -> tuple[keras.Model, dict[str, float]]:
    """Train `train.distill.fit`'s teachers (`train_members` with `teacher_config`) in `folder`, or take the
    finished ones from it, and return their average seen through the fit's views, with their figures under
    `teachers/`."""
    fit = cfg.distill.fit
    print(f"[train] fitting {fit.count} teacher{'s' * (fit.count > 1)} first ({fit.model.name}, seeds "
          f"{fit.seed}-{fit.seed + fit.count - 1}) in {folder}, then the student")
    result = train_members(fit.model, teacher_config(cfg), train_split, val_split, folder, log, keep=True)
    keras.mixed_precision.set_global_policy("float32")  # the views' layers score in float32, as the members do
    return with_views(result.model, fit.views), {f"teachers/{k}": v for k, v in result.metrics.items()}


def fitted_teacher_scores(teacher: keras.Model, views: ViewsConfig, faces: np.ndarray, cache: Path,
                          what: str) -> np.ndarray:
    """The fitted teachers' scores on `faces` (float32 Keras), kept in `cache` with the views and the faces'
    digest: they cost minutes with four views, and the teachers in that folder are the ones it keeps."""
    key = np.array([str(views), hashlib.sha256(faces.tobytes()).hexdigest()])
    return cached(cache, key, len(faces), what, lambda: teacher.predict(
        faces[..., None].astype(np.float32), batch_size=256, verbose=0))


def cached(cache: Path | None, key: np.ndarray, rows: int, what: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`, or the scores kept in `cache` under the same `key` (a damaged file is computed again)."""
    if cache is not None and cache.is_file():
        unreadable = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # then computed again, below
        with contextlib.suppress(*unreadable), np.load(cache) as kept:
            if np.array_equal(kept["key"], key) and kept["scores"].shape == (rows, len(CLASSES)):
                print(f"[train] the teachers' scores on {rows} {what}: taken from {cache}")
                return kept["scores"]
    scores = compute()
    if cache is not None:
        with atomic_path(cache) as tmp:
            np.savez(tmp, scores=scores, key=key)
    return scores


def write_outputs(result: TrainResult) -> None:
    with atomic_path(artifacts.KERAS_MODEL) as tmp:
        result.model.save(tmp)
    write_history(result.history, artifacts.TRAIN_HISTORY)
    plots.training_curves(result.history, artifacts.TRAIN_CURVES)
    write_json(artifacts.TRAIN_METRICS, result.metrics)


def log(result: TrainResult) -> None:
    mlflow.log_metrics(result.metrics)
    mlflow.set_tags(result.how)
    for path, folder in ((artifacts.KERAS_MODEL, "train"), (artifacts.TRAIN_CURVES, "plots"),
                         (artifacts.TRAIN_HISTORY, "train")):
        mlflow.log_artifact(str(path), folder)


def distillation(params: Params, splits: tuple[Split, Split], checkpoint: Path, log: MetricsLogger | None,
                 teachers_folder: Path | None = None) -> tuple[np.ndarray | None, dict[str, float]]:
    """The teachers' averaged scores on the faces the student fits (None: no distillation), and the figures to
    log beside the student's: the teachers' average on val (about the most the student can reach) and, when
    fitted here (in `teachers_folder`), the teachers' own. Scores are kept beside the teachers (or in
    `checkpoint`), so a resumed run does not score again."""
    distill, cfg = params.train.distill, params.train
    if not distill.teachers and not distill.fit.count:
        return None, {}
    fitted = np.concatenate([splits[0][0], splits[1][0]]) if cfg.include_val else splits[0][0]
    metrics: dict[str, float] = {}
    if distill.fit.count:
        folder = teachers_folder or checkpoint / "teachers"
        teacher, metrics = fit_teachers(cfg, *splits, folder, log)
        views = distill.fit.views
        scores = fitted_teacher_scores(teacher, views, fitted, folder / "scores-train.npz", "training faces")
        val = None if cfg.include_val else fitted_teacher_scores(teacher, views, splits[1][0],
                                                                 folder / "scores-val.npz", "val faces")
    else:
        uri = tracking.tracking_uri(params.mlflow)
        scores = teacher_scores(distill.teachers, fitted, uri, cache=checkpoint / "teachers-train.npz")
        val = None if cfg.include_val else teacher_scores(distill.teachers, splits[1][0], uri, what="val faces",
                                                          cache=checkpoint / "teachers-val.npz")
    if val is not None:
        metrics["val/teachers_accuracy"] = float((val.argmax(1) == splits[1][1]).mean())
        print(f"[train] the teachers averaged: val accuracy {metrics['val/teachers_accuracy']:.4f}, about the most "
              "the student can reach")
    return scores, metrics


def main() -> None:
    params = load_params()
    report = read_report()
    splits = load_split("train"), load_split("val")
    checkpoint = checkpoint_dir(params, report)
    teachers_folder = fitted_teachers_dir(params.train, report) if params.train.distill.fit.count else None
    try:
        with tracking.stage_run("train", params):
            teachers, teacher_metrics = distillation(params, splits, checkpoint, tracking.log_teacher_step_metrics,
                                                     teachers_folder)
            result = train_members(params.model, params.train, *splits, checkpoint, tracking.log_step_metrics,
                                   teachers)
            result.metrics |= teacher_metrics
            write_outputs(result)
            log(result)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: where it stopped and how to go on, in one line
        done = read_history(checkpoint / "history.csv")
        if teachers_folder is not None and not done:  # stopped before the student's first epoch
            where, folder = "while fitting the teachers", teachers_folder
        else:
            where, folder = f"after epoch {done[-1]['epoch'] if done else 0} of {params.train.epochs}", checkpoint
        print(f"[train] interrupted {where}; the same command resumes from {folder}", file=sys.stderr)
        raise SystemExit(130) from None
    except Diverged as e:  # the run is FAILED; no model file, nothing for quantize to register
        raise SystemExit(f"error: [train] {e}; no model was written") from None
    shutil.rmtree(checkpoint, ignore_errors=True)  # finished: nothing left to resume
    print(f"[train] -> {artifacts.KERAS_MODEL}")


if __name__ == "__main__":
    cli.run(main, __doc__, "train")
