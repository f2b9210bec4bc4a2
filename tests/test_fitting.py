"""pipeline/fitting.py: recipe pieces the FER2013 presets rely on (the time budget's pacing and stop, random
erasing), run in-process on toy data."""

from __future__ import annotations

import io
import itertools
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.fitting import EpochLog, TimeBudget, augmenter, epochs_trained, lr_schedule, make_dataset, optimizer
from tests.conftest import params


def _train_config(**overrides):
    args = [f"train.{k}={v}" for k, v in overrides.items()]
    return params("experiment=fer2013", "data=synthetic", *args).train


class LearningRates(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def _fit(cfg, budget_min: float, clock) -> tuple[keras.callbacks.History, list[float]]:
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = keras.utils.to_categorical(np.arange(32) % 2, 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    steps = 4
    model.compile(optimizer=optimizer(cfg, steps), loss="categorical_crossentropy")
    rates = LearningRates()
    budget = TimeBudget(lr_schedule(cfg, steps), cfg.epochs * steps, budget_min, clock=clock)
    history = model.fit(x, y, batch_size=8, epochs=cfg.epochs, verbose=0, callbacks=[budget, rates])
    return history, rates.seen


def test_a_time_budget_ends_training_early_with_a_complete_schedule() -> None:
    cfg = _train_config(epochs=100, time_budget_min=1, lr=0.01)
    ticks = itertools.count(step=1.0)  # every clock reading is one second later: 60 readings = the budget
    history, rates = _fit(cfg, cfg.time_budget_min, lambda: next(ticks))
    epochs = len(history.history["loss"])
    assert 5 <= epochs < 100, epochs  # stopped by the clock, long before the configured epochs
    # the one-cycle schedule ran through: warm-up to the peak, then decay to (almost) nothing by the end
    assert rates[0] < 0.1 * cfg.lr
    assert max(rates) == pytest.approx(cfg.lr, rel=0.05)
    assert rates[-1] < 0.02 * cfg.lr
    assert rates.index(max(rates)) == pytest.approx(0.3 * len(rates), abs=2)


def test_without_time_pressure_the_schedule_follows_the_steps() -> None:
    cfg = _train_config(epochs=5, time_budget_min=60, lr=0.01)
    history, rates = _fit(cfg, cfg.time_budget_min, lambda: 0.0)  # a clock that never moves
    assert len(history.history["loss"]) == 5
    schedule = lr_schedule(cfg, 4)
    np.testing.assert_allclose(rates, [float(schedule(i)) for i in range(20)], rtol=1e-5)


def test_random_erasing_replaces_a_patch_in_the_configured_share_of_faces() -> None:
    faces = np.full((400, 48, 48, 1), 128, np.float32)
    none = augmenter(_train_config(**{"augment.erasing": 0.0, "augment.brightness": 0, "augment.contrast": 0,
                                      "augment.rotation": 0, "augment.zoom": 0, "augment.shift": 0}), seed=42)
    assert np.array_equal(np.asarray(none(faces, training=True)), faces)
    half = augmenter(_train_config(**{"augment.erasing": 0.5, "augment.brightness": 0, "augment.contrast": 0,
                                      "augment.rotation": 0, "augment.zoom": 0, "augment.shift": 0}), seed=42)
    changed = (np.asarray(half(faces, training=True)) != 128).mean(axis=(1, 2, 3))
    assert 0.4 < (changed > 0).mean() < 0.6
    assert 0.01 < changed[changed > 0].mean() < 0.25  # a patch, not the face


FLAT = {"augment.erasing": 0.0, "augment.brightness": 0, "augment.contrast": 0, "augment.rotation": 0,
        "augment.zoom": 0, "augment.shift": 0, "augment.flip": False, "batch_size": 7}


def test_mixup_blends_two_faces_and_their_labels_by_the_same_weight() -> None:
    # seven flat faces of distinct grey levels, one per class: a blend's grey level tells its two faces' shares
    x = np.repeat(np.arange(1, 8, dtype=np.uint8)[:, None, None] * 30, 48 * 48).reshape(7, 48, 48)
    cfg = _train_config(**{"augment.mixup": 0.4, **FLAT})
    blended = 0
    for images, targets in make_dataset(x, np.arange(7), cfg, training=True).repeat(20):
        for face, target in zip(images.numpy()[..., 0], targets.numpy(), strict=True):
            assert np.ptp(face) < 1e-3  # a whole-face blend: still flat
            np.testing.assert_allclose(face[0, 0], (30 * np.arange(1, 8) * target).sum(), rtol=1e-4)
            assert abs(target.sum() - 1) < 1e-5 and (target > 1e-3).sum() <= 2
            blended += (target > 0.05).sum() == 2
    assert blended > 20  # most of 140 faces mixed with another


def test_cutmix_pastes_a_patch_of_another_face_and_mixes_the_labels_by_its_area() -> None:
    # seven flat faces of distinct grey levels, one per class: every pixel tells whose face it came from
    x = np.repeat(np.arange(1, 8, dtype=np.uint8)[:, None, None] * 30, 48 * 48).reshape(7, 48, 48)
    y = np.arange(7)
    cfg = _train_config(**{"augment.cutmix": 1.0, **FLAT})
    patched = 0
    for images, targets in make_dataset(x, y, cfg, training=True).repeat(20):  # one batch per epoch
        for face, target in zip(images.numpy()[..., 0], targets.numpy(), strict=True):
            levels, counts = np.unique(face, return_counts=True)
            assert len(levels) <= 2 and set(levels) <= set(x[:, 0, 0])  # its own face and one other, no blend
            share = dict(zip((levels / 30 - 1).astype(int), counts / face.size, strict=True))
            # Keras weighs the labels by the patch's real-valued box; the pasted pixels are its grid cells,
            # so the two differ by at most one row and one column of pixels (2/48 of the face)
            np.testing.assert_allclose(target, [share.get(c, 0.0) for c in range(7)], atol=2 / 48)
            assert abs(target.sum() - 1) < 1e-5
            patched += len(levels) == 2
    assert patched > 20  # most of 140 faces got a patch


def test_a_sam_step_applies_the_gradient_of_the_weights_moved_uphill_by_rho() -> None:
    from pipeline.fitting import sharpness_aware

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)).astype("float32"), keras.utils.to_categorical(np.arange(16) % 2, 2)
    rho, lr = 0.5, 0.1

    def net() -> keras.Model:
        keras.utils.set_random_seed(1)
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))

    loss = keras.losses.CategoricalCrossentropy()

    def gradient(weights: list[np.ndarray]) -> list[np.ndarray]:
        model = net()
        model.set_weights(weights)
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return [g.numpy() for g in tape.gradient(value, model.trainable_weights)]

    start = net().get_weights()
    g = gradient(start)
    norm = np.sqrt(sum((a ** 2).sum() for a in g))
    g_moved = gradient([w + rho * a / norm for w, a in zip(start, g, strict=True)])
    expected = [w - lr * a for w, a in zip(start, g_moved, strict=True)]
    plain = [w - lr * a for w, a in zip(start, g, strict=True)]

    sam = sharpness_aware(net(), rho)
    sam.compile(optimizer=keras.optimizers.SGD(lr), loss=loss)
    sam.train_on_batch(x, y)
    for got, want, other in zip(sam.get_weights(), expected, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, other, atol=1e-4)  # the move mattered: not a plain step
    assert sharpness_aware(sam, 0.0) is sam  # rho 0: the model as it is


def _first_batch(cfg, epochs_done: int) -> np.ndarray:
    x = np.random.default_rng(0).integers(0, 255, (64, 48, 48), dtype=np.uint8)
    return next(iter(make_dataset(x, np.arange(64) % 7, cfg, training=True, epochs_done=epochs_done)))[0].numpy()


def test_a_resumed_run_does_not_replay_the_batches_of_its_first_epoch() -> None:
    # A new process rebuilds the input pipeline from its seeds: with the run's own seed it would start again
    # at epoch 1's order and augmentation. A fresh pipeline here stands for that new process.
    cfg = _train_config()
    first = _first_batch(cfg, 0)
    np.testing.assert_array_equal(_first_batch(cfg, 0), first)  # an uninterrupted run stays reproducible
    after_three, after_four = _first_batch(cfg, 3), _first_batch(cfg, 4)
    assert not np.array_equal(after_three, first)
    assert not np.array_equal(after_four, after_three)
    np.testing.assert_array_equal(_first_batch(cfg, 3), after_three)  # a resume is reproducible too


def _epoch_log(clock) -> tuple[EpochLog, list[tuple[dict, int]]]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    logged: list[tuple[dict, int]] = []
    progress = EpochLog(epochs=4, n_train=320, batch_size=32, log=lambda m, step: logged.append((m, step)),
                        clock=clock)
    progress.set_model(model)
    return progress, logged


def test_an_epoch_cut_short_by_the_time_budget_is_logged_as_the_part_it_was(capsys) -> None:
    """10 batches of 32 per epoch; a whole epoch (1 s a batch, then 5 s of validation), then one that the budget
    ends after 3 batches: 1.3 epochs, and 32 images/s in both, not 32 x 3 / 8 s."""
    now = [0.0]
    progress, logged = _epoch_log(lambda: now[0])
    for epoch, batches in enumerate([10, 3]):
        progress.on_epoch_begin(epoch)
        for batch in range(batches):
            now[0] += 1.0
            progress.on_train_batch_end(batch)
        now[0] += 5.0  # validation
        logs = {"loss": 1.0, "accuracy": 0.5}
        progress.on_epoch_end(epoch, logs)
        assert logs["epoch_fraction"] == batches / 10  # into the CSV history that resumes and metrics read
    assert [m["images_per_s"] for m, _ in logged] == [32.0, 32.0]
    assert progress.typical_images_per_s() == 32.0
    assert "epoch 2/4 (partial: 3 of 10 batches)" in capsys.readouterr().out
    rows = [{"epoch": 1, "epoch_fraction": 1.0}, {"epoch": 2, "epoch_fraction": 0.3}]
    assert epochs_trained(rows) == 1.3 and epochs_trained([{"epoch": 1}, {"epoch": 2}]) == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log file"])
def test_a_bar_shows_the_batches_within_an_epoch_only_on_a_terminal(monkeypatch, capsys, terminal: bool) -> None:
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    progress, _ = _epoch_log(lambda: 0.0)
    progress.on_epoch_begin(0)
    for batch in range(4):
        progress.on_train_batch_end(batch, {"loss": 1.25})
    if terminal:  # tqdm redraws at most 10 times a second: ask for the drawing a user would see next
        progress._bar.refresh()
    shown = stderr.getvalue()
    progress.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
    if terminal:
        assert "[train] epoch 1/4" in shown and "4/10" in shown and "loss=1.2500" in shown
    else:
        assert shown == ""
    assert progress._bar is None  # cleared before the epoch's line, which is printed either way
    assert "[train] epoch 1/4 (partial: 4 of 10 batches)" in capsys.readouterr().out
