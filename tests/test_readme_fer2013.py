"""The README's "Training on FER2013" steps 2-3 run as written, on a tiny fake FER2013 zip in a fresh copy of the
project: step 2's `dvc add ... && git add ...` verbatim (it failed: the .dvc file was git-ignored), then step 3's
command queued (`--queue`, its first stage) and `dvc queue start`: step 2 exists so that queued experiments, which
run in a temporary copy, find the data."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import REPO, make_project_copy, project_env, run, run_queue

pytestmark = pytest.mark.integration

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def step(n: int) -> str:
    """The first `...` command of step `n` of the README's FER2013 section, as printed."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Training on FER2013"):]
    item = re.search(rf"^{n}\. (.*?)(?=^\d+\. |^#|\Z)", section, re.S | re.M).group(1)
    return re.search(r"`([^`]*(?:dvc|git) [^`]*)`", item.replace("\n   ", " ")).group(1)


def fake_fer2013(path: Path, train: int = 10, test: int = 3) -> int:
    """A zip in the Kaggle layout (train/<class>/*.jpg, test/<class>/*.jpg) of noise faces; the test count."""
    import cv2

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", train), ("test", test)):
            for label in CLASSES:
                for i in range(n):
                    _, jpg = cv2.imencode(".jpg", rng.integers(0, 256, (48, 48), dtype=np.uint8))
                    zf.writestr(f"{split}/{label}/{i}.jpg", jpg.tobytes())
    return test * len(CLASSES)


def test_the_readme_fer2013_steps_2_and_3_run_as_written(tmp_path: Path) -> None:
    assert step(2) == "dvc add data/raw/fer2013.zip && git add data/raw/fer2013.zip.dvc"
    assert step(3) == "dvc exp run -S experiment=fer2013"
    work = tmp_path / "repo"
    env = project_env(f"sqlite:///{work / 'mlflow.db'}")
    make_project_copy(work, env, [])
    test_faces = fake_fer2013(work / "data/raw/fer2013.zip")
    result = subprocess.run(["bash", "-c", step(2)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # was: bad DVC file name '...fer2013.zip.dvc' is git-ignored
    staged = run(["git", "diff", "--cached", "--name-only"], work, env).stdout.split()
    assert staged == ["data/raw/fer2013.zip.dvc"]
    assert "data/raw/fer2013.zip" not in run(["git", "ls-files"], work, env).stdout.split()  # the data stays out
    (work / "data/raw/fer2013.zip").unlink()  # DVC finds the .dvc file (a folder it reads as ignored hid it)
    run(["dvc", "checkout", "--allow-missing", "-q"], work, env)  # missing: dvc.lock's outputs, not in this cache
    assert (work / "data/raw/fer2013.zip").is_file()

    # step 3 queued, as step 2 is for: the queued copy must find the zip. Only `prepare` reads it; the stages
    # after it are the session's repro (tests/test_pipeline.py), so they are not run again here
    queue = step(3).replace("dvc exp run", "dvc exp run --queue prepare", 1).split()
    run(queue, work, env)
    status = run_queue(work, env, tmp_path / "queue.log", jobs=1)
    assert "Success" in status and "Failed" not in status, (status, (tmp_path / "queue.log").read_text()[-3000:])
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], work, env).stdout.split()
    lock = yaml.safe_load(run(["git", "show", f"{refs[0]}:dvc.lock"], work, env).stdout)["stages"]["prepare"]
    dep = next(d for d in lock["deps"] if d["path"] == "data/raw/fer2013.zip")
    assert dep["md5"] == yaml.safe_load((work / "data/raw/fer2013.zip.dvc").read_text())["outs"][0]["md5"]
    md5 = next(o["md5"] for o in lock["outs"] if o["path"] == "data/prepared/report.json")
    report = json.loads((work / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_text())
    assert report["source"] == "fer2013" and report["counts"]["test"]["total"] == test_faces
