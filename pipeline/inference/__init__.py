"""Running a trained expression model, with no TensorFlow: what a user installs on a laptop.

    from pipeline.inference import ExpressionRecognizer

Modules: `recognizer` (the Python API), `realtime` (the `fer-realtime` command) and `outputs` (its files),
`classifier` (LiteRT), `detectors` (faces), `media` (sources and sinks), `registry` (which model runs,
downloads, promotion), `contract` (labels, tags, names), `serving` (the MLflow pyfunc). A test imports each
in a fresh interpreter and checks that TensorFlow and Keras stay unloaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExpressionRecognizer", "FacePrediction"]


def __getattr__(name: str) -> Any:  # lazy: importing a light module of this package stays light
    if name in __all__:
        from pipeline.inference import recognizer

        return getattr(recognizer, name)
    raise AttributeError(name)
