"""Lineage: a registered version names the run, data and config that made it, and the rebuild works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipeline.config import CONF_DIR
from pipeline.flatparams import to_flat_dict
from pipeline.inference.registry import sha256_of
from pipeline.lineage import conf_at, rebuild_overrides, render
from tests.conftest import params

from .conftest import Repro, project_env, run

pytestmark = pytest.mark.integration


def lineage(repro: Repro, uri: str, *extra: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pipeline.lineage", uri, *extra], repro.path, repro.env)


def test_version_tags_match_the_run_and_the_data(repro: Repro, mlflow_server) -> None:
    registered = json.loads((repro.path / "models/registered.json").read_text())
    report = json.loads((repro.path / "data/prepared/report.json").read_text())
    evaluate = json.loads((repro.path / "metrics/evaluate.json").read_text())
    client = mlflow.MlflowClient(mlflow_server.uri)
    version = client.get_model_version(registered["name"], registered["version"])
    run_id = json.loads((repro.path / "runs/quantize.json").read_text())["run_id"]
    assert version.tags["run_id"] == run_id == registered["run_id"]
    assert version.tags["train_digest"] == report["digests"]["train"]
    assert version.tags["test_digest"] == report["digests"]["test"]
    assert version.tags["tflite_sha256"] == sha256_of(repro.path / "models/tflite/int8.tflite")
    assert float(version.tags["test_accuracy"]) == evaluate["test/accuracy"]
    # the version says how fast, how big, and why it is (or is not) champion, in its tags and description
    bench = json.loads((repro.path / "metrics/benchmark.json").read_text())
    assert float(version.tags["latency_ms_per_face"]) == pytest.approx(bench["latency/ms_per_face"], abs=1e-4)
    assert float(version.tags["size_kib"]) == pytest.approx(bench["size/kib"], abs=0.1)
    assert version.tags["promotion"] == "champion" and version.tags["promotion_reason"]
    assert version.tags["promotion_reason"] in version.description and "ms per face" in version.description
    assert len(version.tags["git_commit"]) == 40 and version.tags["git_dirty"] == "false"
    assert version.tags["dvc_data_md5"]  # the generator module's hash from dvc.lock
    inputs = client.get_run(run_id).inputs.dataset_inputs
    digests = {d.dataset.digest for d in inputs}
    assert {report["digests"][s][:36] for s in ("train", "val", "test")} <= digests


def test_lineage_prints_commit_config_data_metrics_and_rebuild(repro: Repro) -> None:
    registered = json.loads((repro.path / "models/registered.json").read_text())
    out = lineage(repro, f"models:/{registered['name']}/{registered['version']}").stdout
    commit = run(["git", "rev-parse", "HEAD"], repro.path, repro.env).stdout.strip()
    assert f"commit    {commit}" in out and "DIRTY" not in out
    assert "train.epochs: 12 -> 6" in out  # the tiny preset, as a diff against conf/ defaults
    assert "test/accuracy" in out
    assert f"rebuild   git checkout {commit} && make venv && . .venv/bin/activate && dvc exp run" in out


def test_rebuild_command_reproduces_the_metrics_exactly(repro: Repro, mlflow_server, tmp_path: Path) -> None:
    registered = json.loads((repro.path / "models/registered.json").read_text())
    info = json.loads(lineage(repro, f"models:/{registered['name']}/{registered['version']}", "--json").stdout)
    clone = tmp_path / "clone"
    env = project_env(f"sqlite:///{tmp_path / 'rebuild.db'}")
    run(["git", "clone", "-q", str(repro.path), str(clone)], tmp_path, env)
    run(["git", "checkout", "-q", info["commit"]], clone, env)
    run(["dvc", "exp", "run", *[a for o in info["rebuild"]["overrides"] for a in ("-S", o)]], clone, env,
        timeout=900)
    original = json.loads((repro.path / "metrics/details/evaluate.json").read_text())
    rebuilt = json.loads((clone / "metrics/details/evaluate.json").read_text())
    for name, metrics in original["models"].items():
        assert rebuilt["models"][name]["accuracy"] == metrics["accuracy"], name
        assert rebuilt["models"][name]["macro_f1"] == metrics["macro_f1"], name
        assert rebuilt["models"][name]["confusion"] == metrics["confusion"], name
    train_a = json.loads((repro.path / "metrics/train.json").read_text())
    train_b = json.loads((clone / "metrics/train.json").read_text())
    assert train_a["val/loss"] == train_b["val/loss"]


def test_a_dirty_tree_is_flagged_on_the_run(repro: Repro, tmp_path: Path) -> None:
    work = tmp_path / "dirty"
    run(["git", "clone", "-q", str(repro.path), str(work)], tmp_path, repro.env)
    (work / "README.md").write_text((work / "README.md").read_text() + "\nan uncommitted edit\n")
    env = project_env(f"sqlite:///{tmp_path / 'dirty.db'}")
    run([sys.executable, "-m", "pipeline.prepare"], work, env)
    run_id = json.loads((work / "runs/prepare.json").read_text())["run_id"]
    assert mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(run_id).data.tags["git.dirty"] == "true"


def test_rebuild_overrides_pick_group_options_then_keys() -> None:
    flat = to_flat_dict(params("data=fer2013", "model=seed_cnn", "train.lr=0.01",
                                                "data.path=/x/fer.zip"))
    overrides = rebuild_overrides(flat)
    assert overrides == ["data=fer2013", "model=seed_cnn", "data.path=/x/fer.zip", "train.lr=0.01"]
    assert params(*overrides) == params("data=fer2013", "model=seed_cnn",
                                                                      "train.lr=0.01", "data.path=/x/fer.zip")
    assert rebuild_overrides(to_flat_dict(params())) == []


def test_render_flags_a_dirty_commit() -> None:
    info = {"model": "models:/m@champion", "name": "m", "version": "3", "run_id": "r", "status": "FINISHED",
            "dvc_exp_name": "", "commit": "abc", "dirty": True,
            "data": {"source": "synthetic", "path": "p", "md5": "h", "datasets": []},
            "config_base": "conf/ at abc", "config_diff": {}, "metrics": {"test_accuracy": 0.9},
            "rebuild": {"command": "dvc repro"}}
    text = render(info)
    assert "commit    abc  (DIRTY: uncommitted changes when it ran)" in text
    assert "config    same as the defaults of conf/ at abc" in text


def test_a_preset_run_rebuilds_through_its_preset() -> None:
    flat = to_flat_dict(params("experiment=tiny", "train.lr=0.01"))
    assert rebuild_overrides(flat) == ["experiment=tiny", "train.lr=0.01"]


def test_the_config_is_diffed_against_conf_of_the_runs_commit() -> None:
    with conf_at("HEAD") as (conf_dir, note):
        assert conf_dir != CONF_DIR and (conf_dir / "config.yaml").is_file() and note.startswith("conf/ at HEAD")
        assert rebuild_overrides(to_flat_dict(params(conf_dir=conf_dir)), conf_dir) == []
    with conf_at("0" * 40) as (conf_dir, note):  # a commit this clone does not have
        assert conf_dir == CONF_DIR and "not in this clone" in note
