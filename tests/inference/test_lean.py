"""The runner's package stays TensorFlow-free: every module of pipeline/inference imports, in a fresh
interpreter, without loading TensorFlow or Keras (a wheel install has neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INFERENCE = Path(__file__).resolve().parents[2] / "pipeline" / "inference"
MODULES = sorted(p.stem for p in INFERENCE.glob("*.py") if p.stem != "__init__")


def test_every_module_is_listed() -> None:
    assert {"classifier", "contract", "detectors", "images", "media", "outputs", "realtime", "recognizer",
            "registry", "serving"} <= set(MODULES)


def test_importing_every_module_loads_no_tensorflow() -> None:
    code = ("import sys\n" + "".join(f"import pipeline.inference.{m}\n" for m in MODULES)
            + "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf_keras'}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
