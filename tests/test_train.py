"""The train stage's core, in-process on tiny synthetic data: what it returns, resuming from a checkpoint
after an interruption, the checkpoint key, and the GPU preset's recipe on a CPU."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from pipeline.config import Params, compose
from pipeline.fitting import Diverged, SharpnessAware
from pipeline.splits import PreparedReport
from pipeline.synthetic import generate
from pipeline.train import checkpoint_dir, train
from tests.conftest import params

TINY = ["data.n_train=280", "data.n_test=70", "train.epochs=2", "train.batch_size=32"]


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")  # train() sets the process-wide policy


@pytest.fixture(scope="module")
def splits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return generate(280, seed=0), generate(70, seed=1)


def tiny(*overrides: str) -> Params:
    return params(*TINY, *overrides)


def test_train_returns_the_model_its_history_and_val_metrics(splits, tmp_path: Path) -> None:
    p = tiny()
    logged: list[tuple[dict, int]] = []
    result = train(p.model, p.train, *splits, tmp_path / "ckpt", log=lambda m, step: logged.append((m, step)))
    assert [r["epoch"] for r in result.history] == [1, 2] and [s for _, s in logged] == [1, 2]
    assert {"loss", "accuracy", "val_accuracy", "lr", "images_per_s", "train_s"} <= set(logged[-1][0])
    x_val, y_val = splits[1]
    scores = result.model.predict(x_val[..., None].astype(np.float32), verbose=0)
    assert result.metrics["val/accuracy"] == float((scores.argmax(1) == y_val).mean())
    assert result.metrics["train/epochs"] == 2 and result.metrics["model/macs_per_view"] > 0
    assert result.metrics["train/minutes"] > 0 and result.how["train.precision"] == "float32"
    assert result.metrics["val/best_epoch_accuracy"] == max(r["val_accuracy"] for r in result.history)


def test_a_fit_on_train_and_val_reports_no_val_figure(splits, tmp_path: Path, capsys) -> None:
    """Val faces are training data then: an accuracy on them would read as held-out and flatter the recipe."""
    p = tiny("train.include_val=true", "train.keep_best=false", "train.epochs=1")
    logged: list[dict] = []
    result = train(p.model, p.train, *splits, tmp_path / "ckpt", log=lambda m, step: logged.append(m))
    assert not any(k.startswith("val") for k in result.metrics) and "val_accuracy" not in logged[-1]
    assert "val_accuracy" not in result.history[-1]
    assert result.metrics["train/epochs"] == 1
    out = capsys.readouterr().out
    assert "350 train (val included) images" in out and "no held-out val accuracy" in out


def test_an_interrupted_training_resumes_after_its_last_finished_epoch(splits, tmp_path: Path) -> None:
    p = tiny("train.epochs=3")

    def interrupt_after_first_epoch(metrics: dict, step: int) -> None:
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C; honoured at the next safe point

    with pytest.raises(KeyboardInterrupt):
        train(p.model, p.train, *splits, tmp_path / "ckpt", log=interrupt_after_first_epoch)
    steps: list[int] = []
    result = train(p.model, p.train, *splits, tmp_path / "ckpt", log=lambda m, step: steps.append(step))
    assert steps == [1, 2, 3]  # epoch 1 replayed from the history, then 2 and 3 trained
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["train_s"] > result.history[0]["train_s"]  # time before the stop counted


def test_a_checkpoint_is_keyed_by_data_model_and_train_params_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    report = PreparedReport("synthetic", "x", "holdout", {}, [], {}, {"train": "a", "val": "b", "test": "c"})

    def folder(*overrides: str, digests: dict | None = None) -> Path:
        r = PreparedReport(**{**report.__dict__, "digests": digests or report.digests})
        return checkpoint_dir(params("experiment=fer2013", "data=synthetic", *overrides), r)

    base = folder()
    assert folder("quantize.views.zoom=0", "quantize.views.flip=false", "evaluate.sample_grid=4") == base
    assert folder("train.lr=0.001") != base and folder("model.dropout=0.2") != base
    assert folder(digests={"train": "other", "val": "b", "test": "c"}) != base


def test_fitted_teachers_are_keyed_by_what_shapes_them_and_outlive_the_students_checkpoints(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    """Teachers cost hours (`fer2013_release`: three of 115 minutes), so trying the student with another network,
    weight, temperature or teachers' views must find them again; their own recipe or the data must not."""
    from pipeline.train import fitted_teachers_dir

    monkeypatch.chdir(tmp_path)
    report = PreparedReport("synthetic", "x", "holdout", {}, [], {}, {"train": "a", "val": "b", "test": "c"})

    def folder(*overrides: str, digests: dict | None = None) -> Path:
        r = PreparedReport(**{**report.__dict__, "digests": digests or report.digests})
        return fitted_teachers_dir(params("experiment=fer2013_release", "data=synthetic", *overrides).train, r)

    base = folder()
    assert base.parent == Path("models/checkpoints/teachers")
    assert folder("model.filters=[16,32,64,128]", "train.distill.weight=0.7", "train.distill.temperature=4",
                  "train.distill.fit.views.zoom=0") == base
    for other in (["train.distill.fit.seed=1"], ["train.distill.fit.count=2"], ["train.distill.fit.time_budget_min=60"],
                  ["train.distill.fit.model.dropout=0.1"], ["train.lr=0.001"]):
        assert folder(*other) != base, other
    assert folder(digests={"train": "other", "val": "b", "test": "c"}) != base
    base.mkdir(parents=True)
    checkpoint_dir(params(), report)  # a student's checkpoint: the teachers stay
    assert base.is_dir()
    folder("train.distill.fit.seed=1")  # other teachers: these are stale now
    assert not base.exists()


def test_a_stale_checkpoint_folder_is_removed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / "models" / "checkpoints" / "0123456789abcdef"
    stale.mkdir(parents=True)
    report = PreparedReport("synthetic", "x", "holdout", {}, [], {}, {"train": "a"})
    kept = checkpoint_dir(params(), report)
    assert not stale.exists() and kept.parent.resolve() == stale.parent


def test_deterministic_training_twice_gives_identical_weights_and_metrics(splits, tmp_path: Path) -> None:
    """`train.deterministic: true` (the default run): the same seed and data give the same network, to the bit,
    in one process as in two (the lineage test rebuilds a whole registered version in a fresh clone)."""
    p = tiny("train.deterministic=true")
    first, second = (train(p.model, p.train, *splits, tmp_path / name) for name in ("a", "b"))
    assert all(np.array_equal(a, b) for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True))
    keys = ("val/accuracy", "val/loss", "val/best_epoch_accuracy")
    assert {k: first.metrics[k] for k in keys} == {k: second.metrics[k] for k in keys}


def test_the_gpu_preset_trains_a_few_steps_on_cpu(splits, tmp_path: Path) -> None:
    """mixed float16, MirroredStrategy over the one device there is, mixup, cutmix and SAM; exported in float32. The
    network is narrowed (the recipe is under test, and float16 is emulated slowly on a CPU)."""
    p = params("experiment=fer2013_full", "data=synthetic", "train.epochs=1", "train.batch_size=32",
                              "train.max_train_samples=64", "model.filters=[8,8,16,16]", "model.dense=16",
                              "train.augment.cutmix=0.5", "train.sam_rho=0.05")
    assert (p.train.precision, p.train.distribute) == ("mixed_float16", "mirrored") and p.train.augment.mixup > 0
    result = train(p.model, p.train, *splits, tmp_path / "ckpt")
    assert result.metrics["train/epochs"] == 1
    assert {layer.compute_dtype for layer in result.model.layers} == {"float32"}
    scores = result.model.predict(np.full((2, 48, 48, 1), 128, np.float32), verbose=0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-3)


def test_the_bundled_release_can_teach_and_is_pinned_by_its_name(splits) -> None:
    from pipeline.inference.registry import release_model
    from pipeline.train import teacher_scores

    faces = splits[0][0][:16]
    name = release_model().uri
    scores = teacher_scores([name], faces, tracking_uri="sqlite:///nowhere.db")
    assert scores.shape == (16, 7)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=0.02)  # int8 scores: steps of 1/256 per class
    with pytest.raises(SystemExit, match=r"^error: train.distill.teachers: release:an-older-release: "
                                         r"the bundled release is release:"):
        teacher_scores(["release:an-older-release"], faces, tracking_uri="sqlite:///nowhere.db")


def test_a_resumed_distillation_takes_the_teachers_scores_from_its_checkpoint(splits, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """Scoring every training face with three big teachers took minutes per start; the checkpoint keeps the
    scores, keyed by the teachers' sha256 and the faces, and a damaged or foreign file is scored again."""
    import shutil

    from pipeline.inference.classifier import TFLiteClassifier
    from pipeline.inference.registry import RELEASE_DIR, release_model
    from pipeline.train import teacher_scores

    shutil.copytree(RELEASE_DIR, tmp_path / "teachers" / "t1")
    faces, name, cache = splits[0][0][:12], release_model().uri, tmp_path / "ckpt" / "teachers-train.npz"
    first = teacher_scores([name], faces, "sqlite:///nowhere.db", cache=cache)
    assert cache.is_file()
    calls = []
    predict = TFLiteClassifier.predict
    monkeypatch.setattr(TFLiteClassifier, "predict", lambda self, x: calls.append(len(x)) or predict(self, x))
    np.testing.assert_array_equal(teacher_scores([name], faces, "sqlite:///nowhere.db", cache=cache), first)
    assert calls == []  # from the file
    teacher_scores([name], faces[:6], "sqlite:///nowhere.db", cache=cache)  # other faces: scored again
    assert calls == [6]
    teacher_scores([name, "teacher:t1"], faces[:6], "sqlite:///nowhere.db", tmp_path / "teachers", cache=cache)
    assert calls == [6, 6, 6]  # other teachers: both scored
    cache.write_bytes(cache.read_bytes()[:40])  # a write cut short
    np.testing.assert_array_equal(teacher_scores([name], faces, "sqlite:///nowhere.db", cache=cache), first)
    assert calls == [6, 6, 6, 12]
    assert teacher_scores([name], faces, "sqlite:///nowhere.db", cache=cache).shape == (12, 7)
    assert calls == [6, 6, 6, 12]  # rewritten whole, read back


def test_the_teachers_val_accuracy_is_their_averaged_scores_against_the_labels(splits, tmp_path: Path) -> None:
    """Logged as val/teachers_accuracy when distilling: about the most the student can reach."""
    from pipeline.inference.registry import release_model
    from pipeline.train import distillation, teacher_scores

    name = release_model().uri
    p = tiny(f"train.distill.teachers=[{name}]", "train.distill.weight=0.5", "mlflow.tracking_uri=sqlite:///nowhere.db")
    faces = splits[1][0][:20]
    picked = teacher_scores([name], faces, "sqlite:///nowhere.db").argmax(axis=1)
    for labels, expected in ((picked, 1.0), ((picked + 1) % 7, 0.0),
                             (np.where(np.arange(20) < 5, picked, (picked + 1) % 7), 0.25)):
        scores, metrics = distillation(p, (splits[0], (faces, labels)), tmp_path / str(expected), None)
        assert metrics == {"val/teachers_accuracy": expected} and scores.shape == (280, 7)
    assert distillation(tiny(), splits, tmp_path / "none", None) == (None, {})  # no teachers: no distillation


def test_teachers_fitted_first_teach_the_student_and_are_not_fitted_again(splits, tmp_path: Path, capsys) -> None:
    """`train.distill.fit`: the release recipe in one run. The teachers (their own model section, seeds and
    views) are fitted, kept in the checkpoint, and their scores reused by a resumed run."""
    from pipeline.train import distillation

    p = tiny("train.distill.fit.count=2", "train.distill.fit.seed=5", "train.distill.weight=0.5",
             "+model@train.distill.fit.model=fer_vgg", "train.distill.fit.model.filters=[8,8,16,16]",
             "train.distill.fit.views.flip=true", "train.epochs=1")
    assert p.train.distill.fit.model.filters == [8, 8, 16, 16] != p.model.filters  # not the student's
    curves: list[tuple[dict, int]] = []
    scores, metrics = distillation(p, splits, tmp_path / "ckpt", lambda m, step: curves.append((m, step)))
    assert [step for _, step in curves] == [1, 2]  # teacher 1, then teacher 2
    assert scores.shape == (280, 7) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert metrics["teachers/train/members"] == 2 and 0 <= metrics["val/teachers_accuracy"] <= 1
    assert {"teachers/val/member1_accuracy", "teachers/val/member2_accuracy"} <= set(metrics)
    first = keras.models.load_model(tmp_path / "ckpt" / "teachers" / "member1" / "member.keras")
    widths = [layer.filters for layer in first.layers if isinstance(layer, keras.layers.Conv2D)]
    assert widths == [8, 8, 8, 8, 16, 16, 16, 16]  # the fit's model (fer_vgg's two convs per stage), not the student's
    kept = tmp_path / "ckpt" / "teachers" / "member2" / "member.keras"
    made, out = kept.stat().st_mtime_ns, capsys.readouterr().out
    assert "fitting 2 teachers first (convnet, seeds 5-6)" in out and "member 2 of 2, seed 6" in out
    again, _ = distillation(p, splits, tmp_path / "ckpt", None)
    np.testing.assert_array_equal(again, scores)
    out = capsys.readouterr().out
    assert kept.stat().st_mtime_ns == made and out.count("finished earlier") == 2
    assert "the teachers' scores on 280 training faces: taken from" in out


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.distill.fit.count=2", "train.distill.weight=0.5"],
     r"^train\.distill\.fit\.model: missing; train\.distill\.fit\.count = 2 needs the teachers' model section"),
    (["train.distill.fit.count=1", "train.distill.weight=0.5", "+model@train.distill.fit.model=fer_vgg",
      "train.distill.fit.model.name=vgg"], r"^train\.distill\.fit\.model\.name = 'vgg': must be one of seed_cnn,"),
    (["train.distill.fit.count=1", "train.distill.weight=0.5", "+model@train.distill.fit.model=fer_vgg",
      "train.distill.fit.model.filters=[8,-8]"], r"^train\.distill\.fit\.model\.filters"),
    (["train.distill.fit.count=1", "+model@train.distill.fit.model=fer_vgg"],
     r"^train\.distill\.weight = 0\.0: must be > 0 when teachers are given$"),
    (["train.distill.fit.count=1", "train.distill.weight=0.5", "+model@train.distill.fit.model=fer_vgg",
      "train.distill.teachers=[release:x]"], r"^train\.distill\.fit\.count = 1: must be 0 when teachers are given"),
], ids=["no model", "unknown model", "bad model value", "no weight", "files and fitted"])
def test_a_teacher_fit_that_cannot_work_fails_at_start_up_naming_the_key(overrides: list[str], message: str) -> None:
    from pipeline.inference.schema import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        tiny(*overrides)
    assert "\n" not in str(info.value)


def test_a_committed_teacher_teaches_only_while_it_is_the_file_its_card_pins(splits, tmp_path: Path) -> None:
    """Teachers live in git (models/teachers/<name>/) so an ensemble can grow across sessions and hosts; an
    edited or half-copied file must fail the run, not silently become another teacher."""
    import shutil

    from pipeline.inference.classifier import ModelError
    from pipeline.inference.registry import RELEASE_DIR, release_model, teacher_model
    from pipeline.train import teacher_scores

    folder = tmp_path / "teachers" / "t1"
    shutil.copytree(RELEASE_DIR, folder)
    faces = splits[0][0][:8]
    taught = teacher_scores(["teacher:t1"], faces, "sqlite:///nowhere.db", tmp_path / "teachers")
    released = teacher_scores([release_model().uri], faces, "sqlite:///nowhere.db")
    np.testing.assert_array_equal(taught, released)  # the same file, the same scores
    with pytest.raises(SystemExit, match=r"^error: train.distill.teachers: teacher:t2: no .*teachers/t2/model.tflite "
                                         r"\(teachers in .*: t1\)$"):
        teacher_scores(["teacher:t2"], faces, "sqlite:///nowhere.db", tmp_path / "teachers")
    labels = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps({**labels, "labels": labels["labels"][::-1]}))
    with pytest.raises(SystemExit, match=r"^error: train.distill.teachers: teacher:t1: labels \['surprise', .*not the "
                                         r"pipeline's class order \['angry', "):  # averaged by column: refused
        teacher_scores(["teacher:t1"], faces, "sqlite:///nowhere.db", tmp_path / "teachers")
    (folder / "labels.json").write_text(json.dumps(labels))
    with open(folder / "model.tflite", "r+b") as fh:  # one byte changed
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match=r"sha256 differs from its model_card\.json"):
        teacher_model("t1", tmp_path / "teachers")
    (folder / "model_card.json").unlink()
    with pytest.raises(ModelError, match=r"model_card\.json: missing or unreadable"):
        teacher_model("t1", tmp_path / "teachers")


def test_distillation_targets_mix_softened_teacher_scores_with_the_labels() -> None:
    from pipeline.fitting import distillation_targets

    y = np.array([0, 3])
    teacher = np.array([[0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(distillation_targets(y, teacher, 0.0, 1.0), np.eye(7)[y])
    np.testing.assert_allclose(distillation_targets(y, teacher, 1.0, 1.0), teacher, atol=1e-6)
    soft = distillation_targets(y, teacher, 1.0, 2.0)
    assert soft[0, 0] == pytest.approx(0.25, abs=1e-6)  # sqrt(0.1) / (sqrt(0.1) + sqrt(0.9))
    half = distillation_targets(y, teacher, 0.5, 1.0)
    assert half[0].tolist() == pytest.approx([0.55, 0, 0, 0.45, 0, 0, 0])
    np.testing.assert_allclose(half.sum(axis=1), 1.0, atol=1e-6)


def test_sam_trains_and_exports_a_plain_model_that_loads_without_the_training_class(splits, tmp_path: Path) -> None:
    p = tiny("train.sam_rho=0.05")
    result = train(p.model, p.train, *splits, tmp_path / "ckpt")
    assert result.metrics["train/epochs"] == 2 and not isinstance(result.model, SharpnessAware)
    result.model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")  # no custom_objects: a plain Keras model
    faces = splits[1][0][:4, ..., None].astype(np.float32)
    np.testing.assert_allclose(loaded.predict(faces, verbose=0), result.model.predict(faces, verbose=0), atol=1e-6)


def test_an_ensemble_trains_its_members_from_their_own_seeds_and_exports_their_average(splits, tmp_path: Path) -> None:
    from pipeline.train import train_members

    p = tiny("train.members=2")
    steps: list[int] = []
    result = train_members(p.model, p.train, *splits, tmp_path / "ckpt", log=lambda m, step: steps.append(step))
    assert steps == [1, 2, 3, 4] and [r["epoch"] for r in result.history] == [1, 2, 3, 4]  # member 2 after 1
    assert result.metrics["train/members"] == 2 and result.metrics["train/epochs"] == 4
    one = train(p.model, p.train, *splits, tmp_path / "one").metrics["model/macs_per_view"]
    assert result.metrics["model/macs_per_view"] == 2 * one
    first, second = (result.model.get_layer(f"member{i}") for i in (1, 2))
    assert not np.array_equal(first.get_weights()[0], second.get_weights()[0])  # seeds 42 and 43
    x_val, y_val = splits[1]
    faces = x_val[..., None].astype(np.float32)
    scores = result.model.predict(faces, verbose=0)
    np.testing.assert_allclose(scores, (first.predict(faces, verbose=0) + second.predict(faces, verbose=0)) / 2,
                               rtol=1e-5, atol=1e-6)
    assert result.metrics["val/accuracy"] == float((scores.argmax(1) == y_val).mean())
    for i, member in enumerate((first, second), 1):
        alone = member.predict(faces, verbose=0).argmax(1)
        assert result.metrics[f"val/member{i}_accuracy"] == float((alone == y_val).mean())
    result.model.save(tmp_path / "model.keras")  # as the stage writes it and quantize reads it
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras").predict(faces, verbose=0), scores,
                               rtol=1e-5, atol=1e-6)


def test_an_interrupted_ensemble_keeps_its_finished_members(splits, tmp_path: Path, capsys) -> None:
    from pipeline.train import train_members

    p = tiny("train.members=2", "train.epochs=1")

    def interrupt_in_the_second_member(metrics: dict, step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_members(p.model, p.train, *splits, tmp_path / "ckpt", log=interrupt_in_the_second_member)
    kept = tmp_path / "ckpt" / "member1" / "member.keras"
    made = kept.stat().st_mtime_ns
    steps: list[int] = []
    result = train_members(p.model, p.train, *splits, tmp_path / "ckpt", log=lambda m, step: steps.append(step))
    assert kept.stat().st_mtime_ns == made and "finished earlier: 1 epochs" in capsys.readouterr().out
    assert steps == [1, 2] and result.metrics["train/epochs"] == 2  # member 1 replayed, member 2 resumed


def test_a_diverging_training_stops_at_the_first_nan_loss(splits, tmp_path: Path) -> None:
    p = tiny("train.lr=1e9", "train.epochs=3")
    logged: list[int] = []
    with pytest.raises(Diverged, match=r"the training loss became (nan|inf) in epoch 1, batch \d+: training "
                                       r"diverged; lower train\.lr \(now 1e\+09\)") as err:
        train(p.model, p.train, *splits, tmp_path / "ckpt", log=lambda m, step: logged.append(step))
    assert "\n" not in str(err.value)
    assert logged == []  # not one epoch of NaN curves logged, no backup of NaN weights taken
    assert not (tmp_path / "ckpt" / "backup").exists()


def test_a_diverging_train_stage_exits_with_one_line_and_writes_no_model(store: str, tmp_path: Path,
                                                                         monkeypatch) -> None:
    from omegaconf import OmegaConf

    from pipeline import artifacts, prepare
    from pipeline import train as stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    (tmp_path / "params.yaml").write_text(OmegaConf.to_yaml(compose([*TINY, "train.lr=1e9"])))
    prepare.main()
    with pytest.raises(SystemExit) as stop:
        stage.main()
    message = str(stop.value.code)
    assert message.startswith("error: [train] the training loss became") and "\n" not in message
    assert "lower train.lr (now 1e+09)" in message and message.endswith("no model was written")
    assert not artifacts.KERAS_MODEL.exists() and not artifacts.TRAIN_METRICS.exists()
    runs = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name(params().mlflow.experiment_name)
         .experiment_id], max_results=1)
    assert runs[0].info.status == "FAILED" and "train/epochs" not in runs[0].data.metrics


@pytest.fixture(scope="module")
def interrupted(splits, tmp_path_factory) -> Path:
    """A checkpoint of a 3-epoch training stopped after epoch 2: backup of epoch 2 (latest) and 1 (.bkp)."""
    p, folder = tiny("train.epochs=3"), tmp_path_factory.mktemp("interrupted") / "ckpt"

    def interrupt_after_second_epoch(metrics: dict, step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(p.model, p.train, *splits, folder, log=interrupt_after_second_epoch)
    keras.mixed_precision.set_global_policy("float32")
    return folder


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else bytes(len(data)))


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
@pytest.mark.parametrize(("damaged", "resumes_after"), [(["latest.weights.h5"], 1), (["latest.weights.h5.bkp"], 2),
                                                        (["latest.weights.h5", "latest.weights.h5.bkp"], 0)],
                         ids=["latest", "bkp", "both"])
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_resumed(splits, interrupted: Path, tmp_path: Path,
                                                                        capsys, damaged: list[str], how: str,
                                                                        resumes_after: int) -> None:
    import shutil

    folder = shutil.copytree(interrupted, tmp_path / "ckpt")
    for name in damaged:
        _damage(folder / "backup" / name, how)
    kept = {name: (folder / "backup" / name).read_bytes() for name in damaged}
    p, steps = tiny("train.epochs=3"), []
    result = train(p.model, p.train, *splits, folder, log=lambda m, step: steps.append(step))
    assert steps == [1, 2, 3] and [r["epoch"] for r in result.history] == [1, 2, 3]  # each epoch logged once
    out = capsys.readouterr().out
    for name in damaged:  # one line each, and the file is renamed, not deleted
        assert f"[train] checkpoint {folder / 'backup' / name} unreadable (" in out
        assert (folder / "unreadable" / name).read_bytes() == kept[name]
    if resumes_after:
        assert f"resuming after epoch {resumes_after} from" in out
    else:
        assert "no readable checkpoint left" in out and "training starts fresh" in out and "resuming" not in out


def test_a_backup_write_that_fails_half_way_leaves_the_previous_pair_readable(tmp_path: Path) -> None:
    """A kill or power loss inside Keras' save: the files being replaced are never the ones written to."""
    from pipeline.fitting import EpochLog, usable_backup
    from pipeline.train import callbacks_for

    p = tiny()
    (backup,) = [c for c in callbacks_for(p.train, EpochLog(2, 10, 2), tmp_path, 5, 0.0)
                 if isinstance(c, keras.callbacks.BackupAndRestore)]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    backup.set_model(model)
    backup.on_epoch_end(0)  # epoch 1 backed up
    backup.on_epoch_end(1)  # epoch 2 backed up, epoch 1 kept as .bkp

    def cut_short(filepath: str | Path, overwrite: bool = True) -> None:
        Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # the first bytes, then the power goes
        raise OSError("killed")

    model.save_weights = cut_short
    with pytest.raises(OSError, match="killed"):
        backup.on_epoch_end(2)
    assert usable_backup(tmp_path / "backup", tmp_path / "unreadable") == 2
    assert not (tmp_path / "unreadable").exists()
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json", "training_metadata.json.bkp"]


def test_an_unreadable_finished_member_is_set_aside_and_trained_again(tmp_path: Path, capsys) -> None:
    from pipeline.train import finished_member

    folder = tmp_path / "member1"
    folder.mkdir()
    (folder / "member.json").write_text('{"metrics": {}, "how": {}}')
    (folder / "member.keras").write_bytes(b"PK\x03\x04 cut short")
    (folder / "history.csv").write_text("epoch,loss\n0,1.0\n")
    assert finished_member(folder, None) is None
    assert "unreadable (" in capsys.readouterr().out
    assert sorted(p.name for p in (folder / "unreadable").iterdir()) == ["history.csv", "member.json", "member.keras"]
