"""How a network trains here: the tf.data input pipeline, augmentation, optimizer and schedule, and the
callbacks for a time budget, per-epoch logging and safe interruption.

Shared by the `train` stage and the benchmarks that time or probe training, so that they measure the
stage's own setup. Augmentation is Keras preprocessing layers applied to whole batches inside tf.data (so
two CPU cores are not starved by per-image Python); the model never sees it, so the exported graph is only
rescaling + network.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import ClassWeight, ModelConfig, Optimizer, Schedule, TrainConfig
from pipeline.files import atomic_path
from pipeline.inference.contract import CLASSES
from pipeline.models import build_model

MetricsLogger = Callable[[dict[str, float], int], None]  # (metrics, step): e.g. mlflow.log_metrics
BF16_FLAGS = {"amx_bf16", "avx512_bf16"}  # CPUs whose matrix units make mixed_bfloat16 pay


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (see pipeline/__init__.py)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def resolve_precision(precision: str, cpu_flags: set[str]) -> str:
    """`auto` -> mixed_bfloat16 on a CPU with AMX-BF16 or AVX512-BF16, else float32; others as given."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if cpu_flags & BF16_FLAGS else "float32"


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """tf.distribute.MultiWorkerMirroredStrategy with a `reduce` that Keras 3's `fit` can call
    (keras-team/keras#20585; without it `fit` fails before its first step):

    - `fit` reduces its first (x, y) batch in one call to learn the shapes to build with, and this strategy
      takes one value per call ("Attempt to convert a value (PerReplica...)"): a nest is reduced value by value,
      in the same order on every worker, as MirroredStrategy does;
    - each step's loss and metrics are reduced "along axis 0", which a scalar does not have ("Invalid reduction
      dimension 0 for input with 0 dimensions"): a scalar is averaged across the replicas as it is.
    """

    def reduce(self, reduce_op: tf.distribute.ReduceOp | str, value: object, axis: int | None) -> object:
        reduce_one = super().reduce

        def one(v: object) -> object:
            scalar = axis is not None and self.experimental_local_results(v)[0].shape.rank == 0
            return reduce_one(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(one, value)


def worker_checkpoint(checkpoint: Path, strategy: tf.distribute.Strategy) -> Path:
    """This process's checkpoint folder: `checkpoint` itself for the chief (and any single-process run); for the
    other workers of a multi-worker cluster a `worker<i>` folder inside it, so that no two processes write the
    same history or backup files when the folder is shared (TensorFlow's multi-worker guide: only the chief
    writes to the real path). Each worker resumes from its own copy, which the all-reduced steps keep equal to
    the chief's."""
    if strategy.extended.should_checkpoint:
        return checkpoint
    return checkpoint / f"worker{strategy.cluster_resolver.task_id}"


def data_seed(seed: int, epochs_done: int) -> int:
    """The seed of the shuffle and augmentation streams of a process that starts after `epochs_done` epochs.

    Those streams start again from their seed in every process, so a run resumed with its own seed would see
    the very batches of its epochs 1, 2, ... again, faces it has already fitted in exactly that crop. A resumed run
    draws a fresh stream instead; an uninterrupted run keeps `seed`. Every worker of a cluster keeps the
    same history, so they agree on it.
    """
    if epochs_done == 0:
        return seed
    return int(np.random.SeedSequence([seed, epochs_done]).generate_state(1)[0] % 2**30)


def augmenter(cfg: TrainConfig, seed: int) -> keras.Sequential:
    """Batch-level random augmentation from config; every factor 0 leaves the layer out.

    Always float32: the pixels are not part of the model, and a mixed-precision policy would otherwise
    hand float16 batches to the input pipeline. `seed`: see `data_seed`.
    """
    a, f32 = cfg.augment, {"dtype": "float32"}
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


def batch_mixer(layer: keras.Layer) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A Keras mixing layer (MixUp, CutMix) as a tf.data map over (pixels, targets) batches: each face is mixed
    with another face of its batch and its targets (labels, or the teachers' mix) in the same proportion."""

    def apply(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mixed = layer({"images": x, "labels": y}, training=True)
        return mixed["images"], mixed["labels"]

    return apply


def mixers(cfg: TrainConfig, seed: int) -> list[Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]]:
    """The configured mixing, float32 whatever the policy (raw 0-255 pixels). MixUp blends two whole faces,
    the weight ~ Beta(a, a) per face; CutMix pastes a patch of one into the other, the labels mixed by the
    patch's area (Keras takes the area of the real-valued box, within a pixel row and column of the pasted
    grid cells)."""
    a, f32 = cfg.augment, {"dtype": "float32"}
    layers: list[keras.Layer] = []
    if a.mixup:
        layers.append(keras.layers.MixUp(a.mixup, seed=seed + 7, **f32))
    if a.cutmix:
        layers.append(keras.layers.CutMix(a.cutmix, seed=seed, **f32))
    return [batch_mixer(layer) for layer in layers]


def make_dataset(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, *, training: bool,
                 targets: np.ndarray | None = None, epochs_done: int = 0) -> tf.data.Dataset:
    """Batches of (raw pixels, one-hot labels, or `targets` [N, 7] when given), augmented when training;
    `epochs_done` (by a run this one resumes) picks a fresh random stream, see `data_seed`."""
    seed = data_seed(cfg.seed, epochs_done)
    ds = tf.data.Dataset.from_tensor_slices((x[..., None].astype(np.float32),
                                             tf.one_hot(y, len(CLASSES)) if targets is None else targets)).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)
    if training:
        augment = augmenter(cfg, seed)
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=cfg.deterministic or None)
        for mix in mixers(cfg, seed):
            ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=cfg.deterministic or None)
    return ds.prefetch(tf.data.AUTOTUNE)


def distillation_targets(y: np.ndarray, teacher_scores: np.ndarray, weight: float, temperature: float) -> np.ndarray:
    """`weight` x the teachers' scores softened by `temperature` (p^(1/T), renormalised) + the rest one-hot."""
    soft = np.power(np.clip(teacher_scores.astype(np.float64), 1e-12, 1.0), 1.0 / temperature)
    soft /= soft.sum(axis=1, keepdims=True)
    return (weight * soft + (1.0 - weight) * np.eye(len(CLASSES))[y]).astype(np.float32)


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


def synchronize_batch_norm(model: keras.Model) -> None:
    """Under a strategy with several replicas (call this in its scope), BatchNormalization normalises each step
    with the statistics of the global batch, all-reduced, instead of each replica's share of it.

    Keras 3 keeps the moving mean and variance per replica (updated from the replica's own batches, never
    reconciled), so the replicas drifted apart and the saved model carried replica 0's statistics, from a
    fraction of the data. Synchronised, every replica makes the same update and keeps the same copy, like the
    trainable weights, and N replicas train the network one device would with the same global batch. The cost
    is three small all-reduces per BatchNormalization layer and step. One replica: left as it is.
    """
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True


def compile_for_training(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Optimizer, label-smoothed loss and accuracy as training uses them (and, under several replicas,
    synchronised BatchNormalization); the benchmarks that time or probe training call this too, so they measure
    the stage's own setup."""
    synchronize_batch_norm(model)
    model.compile(optimizer=optimizer(cfg, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), metrics=["accuracy"])


class SharpnessAware(keras.Model):
    """Sharpness-aware minimisation (SAM, Foret et al. 2021): each step first moves the weights uphill by
    `rho` along their gradient (the worst point of a small ball around them, to first order), takes the
    gradient there, and applies it to the weights it started from, so training prefers flat minima.

    Two forward and backward passes per step, twice the compute: under a time budget, flatness is
    bought with epochs. The step at the moved weights is Keras' own (`super().train_step`: loss, update,
    metrics; the loss shown is the moved weights' loss). Moving back after the update is exact for the
    optimizer's step, which does not depend on the weights; AdamW's decay also sees the move, an error of
    lr x weight_decay x rho, far below one update. Each replica moves by its own batch's gradient, as SAM's
    paper does on several devices. BatchNormalization's moving statistics are updated by both passes (the
    second from the moved weights), as in common SAM code. Training only: `train` exports a plain copy.
    """

    def __init__(self, *args: object, rho: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.rho = rho

    def train_step(self, data: object) -> dict[str, object]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weights = self.trainable_weights
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sample_weight,
                                     training=True)
        gradients = tape.gradient(loss, weights)
        scale = self.rho / (tf.linalg.global_norm(gradients) + 1e-12)
        moves = [g * tf.cast(scale, g.dtype) for g in gradients]
        for w, move in zip(weights, moves, strict=True):
            w.assign_add(move)
        logs = super().train_step(data)
        for w, move in zip(weights, moves, strict=True):
            w.assign_sub(move)
        return logs


def sharpness_aware(model: keras.Model, rho: float) -> keras.Model:
    """`model` trained with SAM of radius `rho` (the same layers and weights); `model` itself when rho is 0."""
    if not rho:
        return model
    return SharpnessAware(model.inputs, model.outputs, rho=rho, name=model.name)


def early_stopping(cfg: TrainConfig) -> keras.callbacks.EarlyStopping:
    """Stop after `early_stopping_patience` epochs without a val gain (0: never) and, with `keep_best`, end
    with the best validation epoch's weights: model selection on val, never on test."""
    return keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.early_stopping_patience or cfg.epochs,
                                         restore_best_weights=cfg.keep_best)


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
        step = min(max(self._steps_done(), by_time), self.total_steps)
        self.model.optimizer.learning_rate.assign(float(self.schedule(step)))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.clock() - self._start >= self.budget_s:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.clock() - self._start >= self.budget_s:
            print(f"[train] time budget of {self.budget_s / 60:g} min spent after "
                  f"{self._steps_done()} of {self.total_steps} steps", flush=True)

    def _steps_done(self) -> int:
        # through NumPy: under a tf.distribute strategy the counter is a MirroredVariable, which float() refuses
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


class EpochLog(keras.callbacks.Callback):
    """One progress line per epoch, the same numbers to `log` (MLflow), and images/s for the speed report.

    Adds `train_s`, the training seconds so far (across resumes), and `epoch_fraction`, the share of the
    epoch's batches trained (below 1 when a time budget ends it), to the epoch's logs, so the CSV history that
    a resumed run reads back knows how much of a time budget is spent and how many epochs were really done.
    Images/s count the images trained on over the time of their batches (not of validation): a budget that
    ended an epoch after a few batches made it read 6 images/s against 390.

    An epoch takes minutes on a laptop's CPU: when stderr is a terminal (or `bar` says so), a tqdm bar shows the
    batches within the epoch on stderr and is cleared before the epoch's line; a log file gets the lines only.
    """

    def __init__(self, epochs: int, n_train: int, batch_size: int, spent_s: float = 0.0,
                 log: MetricsLogger | None = None, clock: Callable[[], float] = time.perf_counter,
                 bar: bool | None = None) -> None:
        super().__init__()
        self.epochs, self.n_train, self.batch_size, self.spent_s = epochs, n_train, batch_size, spent_s
        self.log, self.clock = log, clock
        self.steps = max(1, -(-n_train // batch_size))
        self.images_per_s: list[float] = []
        self.fractions: list[float] = []
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = self._trained = self.clock()
        self._batches = 0
        if self.bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.steps, desc=f"[train] epoch {epoch + 1}/{self.epochs}", unit="batch",
                             file=sys.stderr, dynamic_ncols=True, leave=False)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1  # a time budget can end the last epoch early
        self._trained = self.clock()
        if self._bar is not None:
            if logs and "loss" in logs:
                self._bar.set_postfix(loss=f"{float(keras.ops.convert_to_numpy(logs['loss'])):.4f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        """Clear the batch bar (also after an error or an interruption ended the epoch)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.close()
        seconds = self.clock() - self._start
        self.spent_s += seconds
        fraction = min(self._batches / self.steps, 1.0)
        if logs is not None:
            logs["train_s"] = self.spent_s
            logs["epoch_fraction"] = fraction
        logs = dict(logs or {})
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        images = min(self._batches * self.batch_size, self.n_train)
        logs["images_per_s"] = images / max(self._trained - self._start, 1e-9)
        self.images_per_s.append(logs["images_per_s"])
        self.fractions.append(fraction)
        if self.log is not None:
            self.log({k: float(v) for k, v in logs.items()}, epoch + 1)
        val = (f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.4f}" if "val_loss" in logs
               else "")  # no val set while fitting on train + val
        part = "" if fraction == 1.0 else f" (partial: {self._batches} of {self.steps} batches)"
        print(f"[train] epoch {epoch + 1}/{self.epochs}{part}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}"
              f"{val}  lr {logs['lr']:.2e}  {seconds:.1f}s  {logs['images_per_s']:.0f} img/s", flush=True)

    def typical_images_per_s(self) -> float:
        """The median over whole epochs (a partial one is a few batches: noise), else over all; 0 if none."""
        whole = [r for r, f in zip(self.images_per_s, self.fractions, strict=True) if f == 1.0]
        return float(np.median(whole or self.images_per_s)) if self.images_per_s else 0.0


def epochs_trained(history: list[dict[str, float]]) -> float:
    """The epochs really trained, a partial last one as its share (3.1, not 4); rows from before
    `epoch_fraction` was logged count whole."""
    return round(sum(row.get("epoch_fraction", 1.0) for row in history), 2)


class Diverged(RuntimeError):
    """Training produced a non-finite loss: its weights are no model, so nothing may be saved or registered."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise `Diverged` at the first batch whose loss is NaN or infinite, naming the keys to look at.

    keras.callbacks.TerminateOnNaN only stops `fit`, which then returns normally: the stage went on to save,
    log and register a NaN model and exit 0. Raising instead fails the stage before any output is written.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.lr = cfg.lr

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(keras.ops.convert_to_numpy(loss))):
            raise Diverged(f"the training loss became {float(keras.ops.convert_to_numpy(loss))} in epoch "
                           f"{self._epoch}, batch {batch + 1}: training diverged; lower train.lr "
                           f"(now {self.lr:g}), then look at train.optimizer and train.weight_decay")


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


BACKUP_PAIRS = (("latest.weights.h5", "training_metadata.json"),  # BackupAndRestore's names: the last epoch's
                ("latest.weights.h5.bkp", "training_metadata.json.bkp"))  # and, with double_checkpoint, the one before


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore whose files are never half-written.

    Keras writes the weights and the epoch in place and copies the previous pair to `.bkp` byte by byte, so a
    kill or power loss during a backup left a truncated file that h5py could not open on resume (and, both
    files cut, no way back). Here the new pair is written to temporaries first; then the previous pair is
    renamed to `.bkp` and the new one renamed into place, each step atomic. A kill at any point leaves a
    readable pair (`usable_backup` picks it).
    """

    def _save_model(self) -> None:
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        (weights, meta), (previous_weights, previous_meta) = ((backup / w, backup / m) for w, m in BACKUP_PAIRS)
        with atomic_path(weights, suffix=".weights.h5") as tmp_weights, atomic_path(meta) as tmp_meta:
            self.model.save_weights(tmp_weights, overwrite=True)
            tmp_meta.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            if self.double_checkpoint:
                for path, previous in ((meta, previous_meta), (weights, previous_weights)):
                    if path.exists():
                        os.replace(path, previous)


def _backup_epoch(weights: Path, meta: Path) -> int:
    """The epoch a backup pair holds; an exception if either file is missing or cannot be read in full
    (every array of the weights is read: a file can open and still be cut or overwritten inside)."""
    import h5py

    epoch = int(json.loads(meta.read_text())["epoch"])

    def read(name: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            item[()]

    with h5py.File(weights, "r") as h5:
        h5.visititems(read)
    return epoch


def set_aside(paths: list[Path], folder: Path) -> Path:
    """Move the existing `paths` into `folder` (never over an earlier file there): renamed, not deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.exists():
            target, n = folder / path.name, 1
            while target.exists():
                n += 1
                target = folder / f"{path.name}.{n}"
            os.replace(path, target)
    return folder


def usable_backup(backup: Path, aside: Path) -> int:
    """Check the BackupAndRestore files in `backup` before a resume; the epoch to resume after (0: from scratch).

    A pair that cannot be read (truncated or overwritten by a kill or power loss, or by hand) is moved to
    `aside` with one line; if the last pair is bad and the one before is good, that one is put in its place.
    Otherwise `fit` would fail on resume with an h5py error, whichever pair was bad.
    """
    good: list[tuple[int, Path, Path]] = []
    for weights_name, meta_name in BACKUP_PAIRS:
        weights, meta = backup / weights_name, backup / meta_name
        if not weights.exists() and not meta.exists():
            continue
        try:
            good.append((_backup_epoch(weights, meta), weights, meta))
        except Exception as e:  # h5py's OSError or RuntimeError, JSON, a missing half of the pair
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            set_aside([weights, meta], aside)
            print(f"[train] checkpoint {weights} unreadable ({reason}): set aside in {aside}", flush=True)
    if not good:
        if aside.exists():
            print(f"[train] no readable checkpoint left in {backup}: training starts fresh", flush=True)
        return 0
    epoch, weights, meta = good[0]
    latest_weights, latest_meta = (backup / name for name in BACKUP_PAIRS[0])
    if weights != latest_weights:
        os.replace(weights, latest_weights)
        os.replace(meta, latest_meta)
        print(f"[train] resuming from the checkpoint before it ({weights.name}, epoch {epoch})", flush=True)
    return epoch


def float32_copy(model: keras.Model, cfg: ModelConfig) -> keras.Model:
    """The same weights in a plain float32 model, as exported: mixed-precision training keeps float32 master
    weights, and a training-only class such as `SharpnessAware` must not reach the saved file."""
    keras.mixed_precision.set_global_policy("float32")
    clone = build_model(cfg)
    clone.set_weights(model.get_weights())
    return clone
