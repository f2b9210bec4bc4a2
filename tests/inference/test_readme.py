"""The README's Python API example runs as printed, on the bundled model, without TensorFlow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_api_example_runs_and_names_the_astronauts_expression(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("**Python API**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 6  # "a five-line example"
    check = "\nimport sys\nassert not {'tensorflow', 'keras'} & set(sys.modules), 'TensorFlow was imported'\n"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"}  # no store: the bundled release model
    result = subprocess.run([sys.executable, "-c", code + check], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    label, score, *_ = result.stdout.split()
    assert label == "happy" and float(score) > 0.5  # the astronaut smiles
    assert not (tmp_path / "none.db").exists()  # looking for a champion creates no store
