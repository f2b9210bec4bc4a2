"""Stage `train`: prepared splits -> models/model.keras, per-epoch history, metrics/train.json.

Reads `model` and `train` from params.yaml. The input pipeline is tf.data with augmentation as Keras
preprocessing layers applied to whole batches (so two CPU cores are not starved by per-image Python);
the model itself never sees augmentation, so the exported graph is only rescaling + network.

A checkpoint is written every epoch under `models/checkpoints/<hash of data + model + train params>/`
(a `persist: true` DVC output): an interrupted run resumes from it, and a checkpoint made with other
params or data is never resumed (its folder is deleted).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from pipeline import plots, tracking
from pipeline.config import CLASSES, ClassWeight, Distribute, Optimizer, Params, Schedule, TrainConfig, load_params
from pipeline.files import atomic_path, load_split, write_json
from pipeline.models import build_model, count_macs, export_model
from pipeline.prepare import OUT_DIR as PREPARED
from pipeline.prepare import log_datasets

MODEL_PATH = Path("models/model.keras")
CHECKPOINTS = Path("models/checkpoints")
METRICS_PATH = Path("metrics/train.json")
HISTORY_PATH = Path("plots/train/history.csv")
CURVES_PATH = Path("plots/train/curves.png")


def augmenter(cfg: TrainConfig) -> keras.Sequential:
    """Batch-level random augmentation from config; every factor 0 leaves the layer out.

    Always float32: the pixels are not part of the model, and a mixed-precision policy would otherwise
    hand float16 batches to the input pipeline.
    """
    a, seed, f32 = cfg.augment, cfg.seed, {"dtype": "float32"}
    steps: list[keras.Layer] = []
    if a.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed, **f32))
    if a.rotation:
        steps.append(keras.layers.RandomRotation(a.rotation, fill_mode="reflect", seed=seed + 1, **f32))
    if a.shift:
        steps.append(keras.layers.RandomTranslation(a.shift, a.shift, fill_mode="reflect", seed=seed + 2, **f32))
    if a.zoom:
        steps.append(keras.layers.RandomZoom(a.zoom, a.zoom, fill_mode="reflect", seed=seed + 3, **f32))
    if a.brightness:
        steps.append(keras.layers.RandomBrightness(a.brightness, value_range=(0, 255), seed=seed + 4, **f32))
    if a.contrast:
        steps.append(keras.layers.RandomContrast(a.contrast, value_range=(0, 255), seed=seed + 5, **f32))
    if a.erasing:  # last, so the noise patch is not blurred by the geometric layers
        steps.append(keras.layers.RandomErasing((a.erasing, a.erasing), scale=(0.02, 0.25), value_range=(0, 255),
                                                seed=seed + 6, **f32))
    if not steps:  # Sequential refuses to build with no layers
        steps.append(keras.layers.Identity(**f32))
    return keras.Sequential(steps, name="augment")


def mixup(x: tf.Tensor, y: tf.Tensor, alpha: float, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each example with its mirror in the batch, weight ~ Beta(alpha, alpha)."""
    n = tf.shape(x)[0]
    g1 = tf.random.stateless_gamma([n, 1], seed=[seed, 1], alpha=alpha)
    g2 = tf.random.stateless_gamma([n, 1], seed=[seed, 2], alpha=alpha)
    lam = g1 / (g1 + g2)
    x = lam[:, :, None, None] * x + (1 - lam[:, :, None, None]) * tf.reverse(x, [0])
    return x, lam * y + (1 - lam) * tf.reverse(y, [0])


def make_dataset(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, *, training: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x[..., None].astype(np.float32),
                                             tf.one_hot(y, len(CLASSES)))).cache()
    if training:
        ds = ds.shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)
    if training:
        augment = augmenter(cfg)
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=cfg.deterministic or None)
        if cfg.augment.mixup:
            ds = ds.enumerate().map(lambda i, ab: mixup(*ab, cfg.augment.mixup, cfg.seed + tf.cast(i, tf.int32)),
                                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray, mode: ClassWeight) -> dict[int, float] | None:
    """Inverse-frequency weights (mean 1) so that a rare class such as `disgust` is not ignored."""
    if mode == ClassWeight.none:
        return None
    counts = np.maximum(np.bincount(y, minlength=len(CLASSES)), 1)
    w = len(y) / (len(CLASSES) * counts)
    if mode == ClassWeight.sqrt:
        w = np.sqrt(w)
    w = w / w.mean()
    return {i: float(v) for i, v in enumerate(w)}


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    if cfg.schedule == Schedule.onecycle:
        warmup = max(warmup, int(0.3 * total))
    if cfg.schedule == Schedule.constant:
        return cfg.lr
    if warmup:
        return keras.optimizers.schedules.CosineDecay(cfg.lr / 25, total - warmup, warmup_target=cfg.lr,
                                                      warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(cfg.lr, total)


def optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured optimizer; under a time budget its learning rate is a plain value that `TimeBudget` sets."""
    lr = lr_schedule(cfg, steps_per_epoch)
    if cfg.time_budget_min and not isinstance(lr, float):
        lr = float(lr(0))
    if cfg.optimizer == Optimizer.sgd:
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == Optimizer.adamw:
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(lr)


def compile_for_training(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Optimizer, label-smoothed loss and accuracy as training uses them; the benchmarks that time or probe
    training call this too, so they measure the stage's own setup."""
    model.compile(optimizer=optimizer(cfg, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), metrics=["accuracy"])


class TimeBudget(keras.callbacks.Callback):
    """Train for at most `minutes`, with a complete learning-rate schedule whatever the machine's speed.

    The schedule is driven by the larger of the steps done and the share of the budget used (times the
    total steps), and training stops when the budget is spent. A slower machine therefore runs fewer
    epochs that still warm up and decay to the end, instead of overrunning the budget or being cut off at
    a high learning rate; a fast one runs the configured epochs. Time spent before a resume counts.
    """

    def __init__(self, schedule: float | keras.optimizers.schedules.LearningRateSchedule, total_steps: int,
                 minutes: float, spent_s: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.schedule, self.total_steps = schedule, total_steps
        self.budget_s, self.spent_s, self.clock = minutes * 60, spent_s, clock

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._start = self.clock() - self.spent_s

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if isinstance(self.schedule, float):
            return
        by_time = (self.clock() - self._start) / self.budget_s * self.total_steps
        step = min(max(float(self.model.optimizer.iterations), by_time), self.total_steps)
        self.model.optimizer.learning_rate.assign(float(self.schedule(step)))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.clock() - self._start >= self.budget_s:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.clock() - self._start >= self.budget_s:
            print(f"[train] time budget of {self.budget_s / 60:g} min spent after "
                  f"{int(self.model.optimizer.iterations)} of {self.total_steps} steps", flush=True)


class EpochLog(keras.callbacks.Callback):
    """One progress line per epoch, the same numbers to MLflow, and images/s for the speed report.

    Adds `train_s`, the training seconds so far (across resumes), to the epoch's logs, so the CSV history
    that a resumed run reads back knows how much of a time budget is spent.
    """

    def __init__(self, epochs: int, n_train: int, batch_size: int, spent_s: float = 0.0) -> None:
        super().__init__()
        self.epochs, self.n_train, self.batch_size, self.spent_s = epochs, n_train, batch_size, spent_s
        self.images_per_s: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1  # a time budget can end the last epoch early

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._start
        self.spent_s += seconds
        if logs is not None:
            logs["train_s"] = self.spent_s
        logs = dict(logs or {})
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["images_per_s"] = min(self._batches * self.batch_size, self.n_train) / seconds
        self.images_per_s.append(logs["images_per_s"])
        mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch + 1)
        print(f"[train] epoch {epoch + 1}/{self.epochs}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
              f"val_loss {logs.get('val_loss', float('nan')):.4f}  val_acc {logs.get('val_accuracy', float('nan')):.4f}"
              f"  lr {logs['lr']:.2e}  {seconds:.1f}s  {logs['images_per_s']:.0f} img/s", flush=True)


class SignalsAtSafePoints(keras.callbacks.Callback):
    """Ctrl-C (SIGINT) and SIGTERM during `fit` interrupt it at the next batch or epoch end, not wherever
    Python happens to be.

    A KeyboardInterrupt raised at an arbitrary point can land inside a library callback while a
    checkpoint is being written, where it is swallowed and training carries on; raised here, it always
    stops the run, and an epoch's history row and backup are never left half-done by it.
    """

    def __enter__(self) -> SignalsAtSafePoints:
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: object) -> None:
        self.received = signum

    def _stop_if_signalled(self, *args: object, **kwargs: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"signal {self.received}")

    on_train_batch_end = on_test_batch_end = on_epoch_end = _stop_if_signalled


def checkpoint_dir(params: Params) -> Path:
    """A folder keyed by everything that shapes the weights, so a stale checkpoint can't be resumed.

    Test-time views are not in the key: they are added after training, so changing them before an
    interrupted run is resumed does not throw its epochs away.
    """
    report = json.loads((PREPARED / "report.json").read_text())
    trained = dataclasses.replace(params.model, tta_flip=False, tta_zoom=0)
    key = json.dumps({"data": report["digests"], "model": str(trained), "train": str(params.train)},
                     sort_keys=True)
    path = CHECKPOINTS / hashlib.sha256(key.encode()).hexdigest()[:16]
    if CHECKPOINTS.exists():
        for other in CHECKPOINTS.iterdir():
            if other != path:
                print(f"[train] removing stale checkpoint {other} (made with other params or data)")
                shutil.rmtree(other, ignore_errors=True)
    return path


def read_history(path: Path) -> list[dict[str, float]]:
    """Per-epoch rows of the CSV log; after a resume the last row per epoch wins."""
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            epoch = int(row.pop("epoch")) + 1
            rows[epoch] = {"epoch": epoch, **{k: float(v) for k, v in row.items() if v not in ("", None)}}
    return [rows[k] for k in sorted(rows)]


def main() -> None:
    params = load_params()
    cfg = params.train
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(str(cfg.precision))
    mirrored = cfg.distribute == Distribute.mirrored
    strategy = tf.distribute.MirroredStrategy() if mirrored else tf.distribute.get_strategy()
    x_train, y_train = load_split(PREPARED / "train.npz")
    x_val, y_val = load_split(PREPARED / "val.npz")
    if cfg.max_train_samples:
        x_train, y_train = x_train[: cfg.max_train_samples], y_train[: cfg.max_train_samples]
    ckpt = checkpoint_dir(params)
    ckpt.mkdir(parents=True, exist_ok=True)
    csv_log = ckpt / "history.csv"

    with tracking.stage_run("train", params, upstream="prepare") as run:
        if not run.continued:
            log_datasets(json.loads((PREPARED / "report.json").read_text()))
        steps = math.ceil(len(x_train) / cfg.batch_size)
        with strategy.scope():
            model = build_model(params.model)
            compile_for_training(model, cfg, steps)
        macs = count_macs(export_model(params.model, model))
        print(f"[train] {params.model.name}: {model.count_params():,} parameters, {macs / 1e6:.1f} M MACs/face; "
              f"{len(x_train)} train / {len(x_val)} val images, {cfg.epochs} epochs")
        resumed = read_history(csv_log)
        if resumed:
            print(f"[train] resuming after epoch {resumed[-1]['epoch']} from {ckpt}")
            for row in resumed:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        spent = resumed[-1].get("train_s", 0.0) if resumed else 0.0
        progress = EpochLog(cfg.epochs, len(x_train), cfg.batch_size, spent)
        # In this order at each epoch's end: EpochLog adds the training seconds so far to the logs, the CSV
        # records them, and only then the backup is taken. A kill between the two leaves a CSV row ahead
        # of the backup (the epoch reruns and its last row wins), never a backup ahead of the CSV.
        callbacks = [progress, keras.callbacks.CSVLogger(str(csv_log), append=True),
                     keras.callbacks.BackupAndRestore(str(ckpt / "backup"), double_checkpoint=True)]
        if cfg.time_budget_min:
            callbacks.append(TimeBudget(lr_schedule(cfg, steps), cfg.epochs * steps, cfg.time_budget_min, spent))
            print(f"[train] time budget {cfg.time_budget_min:g} min ({spent / 60:.1f} spent): at most {cfg.epochs} "
                  "epochs, the learning-rate schedule paced to end on time")
        if cfg.early_stopping_patience or cfg.keep_best:
            callbacks.append(keras.callbacks.EarlyStopping(
                "val_accuracy", patience=cfg.early_stopping_patience or cfg.epochs, restore_best_weights=cfg.keep_best))
        start = time.perf_counter()
        with SignalsAtSafePoints() as safe_points:  # last: an epoch's history and backup are complete first
            model.fit(make_dataset(x_train, y_train, cfg, training=True), epochs=cfg.epochs, verbose=0,
                      shuffle=False, validation_data=make_dataset(x_val, y_val, cfg, training=False),
                      class_weight=class_weights(y_train, cfg.class_weight), callbacks=[*callbacks, safe_points])
        seconds = spent + time.perf_counter() - start

        history = read_history(csv_log)
        if cfg.precision != "float32":  # export a float32 graph: the converter and LiteRT want plain floats
            model = float32_copy(model, params)
        model = export_model(params.model, model)
        scores = model.predict(x_val[..., None].astype(np.float32), batch_size=256, verbose=0)
        val_acc = float((scores.argmax(axis=1) == y_val).mean())
        val_loss = float(keras.losses.categorical_crossentropy(tf.one_hot(y_val, len(CLASSES)), scores).numpy().mean())
        metrics = {
            "val_accuracy": val_acc, "val_loss": val_loss,
            "best_val_accuracy": max(r.get("val_accuracy", 0.0) for r in history),
            "epochs": len(history), "params": int(model.count_params()), "macs": macs,
            "seconds": seconds,
            "images_per_s": float(np.median(progress.images_per_s)) if progress.images_per_s else 0.0,
        }
        with atomic_path(MODEL_PATH) as tmp:
            model.save(tmp)
        write_history(history)
        plots.training_curves(history, CURVES_PATH)
        write_json(METRICS_PATH, metrics)
        # all prefixed: an unprefixed `val_accuracy` at step 0 would hide behind the per-epoch curve's last value
        mlflow.log_metrics({f"train_{k}": v for k, v in metrics.items()})
        mlflow.log_artifact(str(MODEL_PATH), "train")
        mlflow.log_artifact(str(CURVES_PATH), "plots")
        mlflow.log_artifact(str(HISTORY_PATH), "train")
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: nothing left to resume
    print(f"[train] val accuracy {val_acc:.4f} after {len(history)} epochs in {seconds:.0f}s -> {MODEL_PATH}")


def float32_copy(model: keras.Model, params: Params) -> keras.Model:
    """The same weights in a float32 model (mixed-precision training keeps float32 master weights)."""
    keras.mixed_precision.set_global_policy("float32")
    clone = build_model(params.model)
    clone.set_weights(model.get_weights())
    return clone


def write_history(history: list[dict[str, float]]) -> None:
    keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    with atomic_path(HISTORY_PATH) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in keys if k in history[0]], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


if __name__ == "__main__":
    main()
