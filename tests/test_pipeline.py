"""The whole pipeline for real: `dvc repro` on the tiny preset against a real `mlflow server`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipeline.inference.classifier import TFLiteClassifier
from pipeline.inference.contract import CLASSES
from pipeline.inference.registry import download_registered
from pipeline.metrics import HEADLINE, HEADLINE_NAMES, recall
from pipeline.splits import load_split

from .conftest import REPO, Repro, free_port, realtime, run, wait_http

pytestmark = pytest.mark.integration


def declared_outputs(repo: Path) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def test_every_declared_output_exists(repro: Repro) -> None:
    for stage in ("prepare", "train", "quantize", "benchmark", "evaluate"):
        assert f"Running stage '{stage}'" in repro.output
    missing = [p for p in declared_outputs(repro.path) if not (repro.path / p).exists()]
    assert not missing
    for variant in ("float32", "float16", "dynamic", "int8"):
        assert (repro.path / f"models/tflite/{variant}.tflite").stat().st_size > 0


def test_metrics_files_are_flat_and_named_by_the_scheme(repro: Repro) -> None:
    files = {stage: json.loads((repro.path / f"metrics/{stage}.json").read_text())
             for stage in ("train", "benchmark", "evaluate")}
    for stage, metrics in files.items():  # one flat mapping of numbers per file, every name `<area>/<what>`
        assert metrics and all(isinstance(v, int | float) and "/" in k for k, v in metrics.items()), stage
    train, bench, evaluate = files["train"], files["benchmark"], files["evaluate"]
    assert train["train/epochs"] == 6 and train["model/macs_per_view"] > 0 and train["train/images_per_s"] > 0
    assert 0 < bench["latency/ms_per_face"] < bench["latency/frame_ms"] and bench["size/kib"] > 0
    assert {recall(c) for c in CLASSES} <= set(evaluate)
    assert {"test/keras_accuracy", "test/float32_accuracy", "test/float16_accuracy", "test/dynamic_accuracy"} \
        <= set(evaluate) and "test/int8_accuracy" not in evaluate  # the registered variant has the plain name
    assert set(HEADLINE_NAMES) <= set(train) | set(bench) | set(evaluate)
    details = json.loads((repro.path / "metrics/details/evaluate.json").read_text())
    for variant in ("keras", "float32", "float16", "dynamic", "int8"):
        m = details["models"][variant]
        assert {"accuracy", "macro_f1", "per_class", "confusion", "agreement_with_keras"} <= set(m)
        assert np.array(m["confusion"]).sum() == details["test_size"] == evaluate["test/faces"]
    assert details["models"]["int8"]["accuracy"] == evaluate["test/accuracy"]
    assert {"int8_t1", "float32_t1", "frame_end_to_end"} <= set(
        json.loads((repro.path / "metrics/details/benchmark.json").read_text())["latency"])
    # the tiny preset learns: above the raw-pixel floor, so its version is promoted on a fresh store
    assert evaluate["test/promotion_floor"] == evaluate["baseline/accuracy"] < evaluate["test/accuracy"]
    assert details["promotion"]["promoted"] is True


def test_one_mlflow_run_holds_every_stage(repro: Repro, mlflow_server) -> None:
    record = json.loads((repro.path / "runs/evaluate.json").read_text())
    client = mlflow.MlflowClient(mlflow_server.uri)
    run_ = client.get_run(record["run_id"])
    assert run_.info.status == "FINISHED"
    assert all(run_.data.tags.get(f"pipeline.stage.{s}") == "done"
               for s in ("prepare", "train", "quantize", "benchmark", "evaluate"))
    assert run_.data.params["model.name"] == "convnet"
    # the same names and values as DVC's metrics files, and nothing else but the curves and data sizes
    files = {}
    for stage in ("train", "benchmark", "evaluate"):
        files |= json.loads((repro.path / f"metrics/{stage}.json").read_text())
    assert {k: run_.data.metrics[k] for k in files} == pytest.approx(files)
    assert all(k in files or k.startswith(("epoch/", "data/")) for k in run_.data.metrics)
    assert len(client.get_metric_history(run_.info.run_id, "epoch/val_accuracy")) >= 2  # a curve, per epoch
    note = run_.data.tags["mlflow.note.content"]  # the run page opens on its headline table
    assert f"| {HEADLINE[0].label} | {HEADLINE[0].show(files['test/accuracy'])} |" in note
    assert "experiment=tiny" not in note and "train.epochs=6" in note  # what differs from the defaults
    assert len(run_.data.tags["mlflow.source.git.commit"]) == 40
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"plots", "tflite", "train"} <= artifacts


def test_registered_champion_reproduces_the_reported_accuracy(repro: Repro, mlflow_server, tmp_path) -> None:
    registered = json.loads((repro.path / "models/registered.json").read_text())
    uri = f"models:/{registered['name']}@champion"
    model = download_registered(uri, mlflow_server.uri, cache_dir=tmp_path)
    assert model.version == registered["version"]
    x, y = load_split(repro.path / "data/prepared/test.npz")
    accuracy = float((TFLiteClassifier(model.tflite, model.labels).predict(x).argmax(1) == y).mean())
    reported = json.loads((repro.path / "metrics/evaluate.json").read_text())["test/accuracy"]
    assert accuracy == reported


def test_the_scorer_reads_the_val_split_as_the_stage_did_and_refuses_bad_arguments(repro: Repro) -> None:
    variant = json.loads((repro.path / "models/registered.json").read_text())["variant"]
    scorer = [sys.executable, "-m", "pipeline.evaluate", f"model=models/tflite/{variant}.tflite"]
    # the README's line, as printed (its `python` is the venv's, first on the PATH of repro.env)
    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("python -m pipeline.evaluate") and "split=val" in x)
    scored = json.loads(run(["bash", "-c", line], repro.path, repro.env).stdout)
    x, y = load_split(repro.path / "data/prepared/val.npz")
    assert scored["data"] == "val split" and scored["n"] == len(y)
    expected = TFLiteClassifier(repro.path / f"models/tflite/{variant}.tflite", list(CLASSES)).predict(x).argmax(1)
    assert scored["accuracy"] == float((expected == y).mean())
    # the evaluate stage logged the same figure: the tiny preset holds val out
    assert json.loads((repro.path / "metrics/evaluate.json").read_text())["val/exported_accuracy"] == scored["accuracy"]
    for bad, message in ((["split=dev"], "error: split=dev: expected train, val or test"),
                         (["split=val", "data.path=x.zip"], "error: give data.path= or split=, not both"),
                         (["threads=abc"], "error: threads=abc: expected a whole number >= 1"),
                         (["threads=0"], "error: threads=0: expected a whole number >= 1")):
        result = subprocess.run([*scorer, *bad], cwd=repro.path, env=repro.env, capture_output=True, text=True)
        assert result.returncode != 0 and result.stderr.strip().splitlines() == [message]


def test_mlflow_models_predict_serves_the_registered_pyfunc(repro: Repro, mlflow_server, tmp_path) -> None:
    registered = json.loads((repro.path / "models/registered.json").read_text())
    x, _ = load_split(repro.path / "data/prepared/test.npz")
    (tmp_path / "input.json").write_text(json.dumps({"inputs": x[:3].tolist()}))
    result = run(["mlflow", "models", "predict", "-m", f"models:/{registered['name']}/{registered['version']}",
                  "-i", str(tmp_path / "input.json"), "-t", "json", "--env-manager", "local",
                  "-o", str(tmp_path / "out.json")], tmp_path, repro.env)
    scores = np.array(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert scores.shape == (3, 7), result.stdout
    assert np.allclose(scores.sum(axis=1), 1.0, atol=0.02)


def test_mlflow_models_serve_answers_invocations_with_scores(repro: Repro, tmp_path) -> None:
    """The registered pyfunc behind MLflow's own scoring server, on 127.0.0.1, as the README shows with curl."""
    registered = json.loads((repro.path / "models/registered.json").read_text())
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(["mlflow", "models", "serve", "-m", f"models:/{registered['name']}@champion",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                  cwd=tmp_path, env=repro.env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        x, _ = load_split(repro.path / "data/prepared/test.npz")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": x[:3].tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            scores = np.array(json.loads(response.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert scores.shape == (3, 7), (tmp_path / "serve.log").read_text()[-2000:]
    local = TFLiteClassifier(repro.path / "models/tflite/int8.tflite", json.loads(
        (repro.path / "models/tflite/labels.json").read_text())["labels"]).predict(x[:3])
    np.testing.assert_allclose(scores, local, atol=1e-6)  # the same model, served


def test_release_writes_the_registered_model_its_labels_and_card(repro: Repro, mlflow_server, tmp_path) -> None:
    from pipeline.inference.registry import sha256_of
    from pipeline.release import release

    registered = json.loads((repro.path / "models/registered.json").read_text())
    evaluate = json.loads((repro.path / "metrics/details/evaluate.json").read_text())
    evaluate["accuracy"] = evaluate["models"]["int8"]["accuracy"]
    card = release(f"models:/{registered['name']}/{registered['version']}", mlflow_server.uri, tmp_path / "rel")
    assert sha256_of(tmp_path / "rel" / "model.tflite") == registered["tflite_sha256"] == card["sha256"]
    assert card["test"]["accuracy"] == evaluate["accuracy"] and set(card["test"]["recall"]) == set(
        evaluate["models"]["int8"]["per_class"])
    assert card["latency"]["ms_per_face_1_thread"] > 0 and card["training"]["rebuild"].startswith("git checkout")
    text = (tmp_path / "rel" / "MODEL_CARD.md").read_text()
    assert f"{evaluate['accuracy']:.2%}" in text and "rebuild   " in text
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["MODEL_CARD.md", "labels.json", "model.tflite",
                                                                    "model_card.json"]
    assert card["role"] == "release" and "bundled with `fer-pipeline`" in text


def test_a_registered_version_becomes_a_committed_teacher(repro: Repro, mlflow_server, tmp_path) -> None:
    from pipeline.inference.registry import teacher_model
    from pipeline.release import release

    registered = json.loads((repro.path / "models/registered.json").read_text())
    metrics = json.loads((repro.path / "metrics/evaluate.json").read_text())
    card = release(f"models:/{registered['name']}/{registered['version']}", mlflow_server.uri,
                   tmp_path / "teachers" / "t", role="teacher")
    assert card["role"] == "teacher" and card["val"]["exported_accuracy"] == metrics["val/exported_accuracy"]
    text = (tmp_path / "teachers" / "t" / "MODEL_CARD.md").read_text()
    assert "A distillation teacher" in text and f"{metrics['val/exported_accuracy']:.2%}" in text
    assert teacher_model("t", tmp_path / "teachers").uri == "teacher:t"


def test_changing_only_the_test_time_views_re_exports_without_retraining(repro: Repro, tmp_path) -> None:
    work = tmp_path / "repo"
    shutil.copytree(repro.path, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["quantize"]["views"]["flip"] = True
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], work, repro.env).stdout)
    assert set(status) == {"quantize"}  # train's params and data are untouched
    output = run(["dvc", "repro"], work, repro.env).stdout
    ran = {s for s in ("prepare", "train", "quantize", "benchmark", "evaluate") if f"Running stage '{s}'" in output}
    assert ran == {"quantize", "benchmark", "evaluate"}
    labels = json.loads((work / "models/tflite/labels.json").read_text())
    assert labels["views"] == {"flip": True, "zoom": 0}


def test_the_pipelines_int8_export_runs_in_the_runner(repro: Repro, tmp_path: Path) -> None:
    """The uint8-input int8 file that the real `dvc repro` exported, not a stand-in, on a video with a face."""
    from tests.fixtures import videos

    clip = tmp_path / "clip.avi"
    videos.make_video(clip, frames=20)
    exported = repro.path / "models" / "tflite" / "int8.tflite"
    result = realtime(f"source={clip}", f"model={exported}", "display=false", "output.json=-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sum(bool(json.loads(line)["faces"]) for line in result.stdout.splitlines()) >= 18


def test_repro_again_runs_no_stage(repro: Repro) -> None:
    again = run(["dvc", "repro"], repro.path, repro.env)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout

