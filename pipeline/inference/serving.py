"""The MLflow pyfunc of a registered model: LiteRT on the .tflite artifact ("models from code").

MLflow has no TFLite flavor. Logging this file as code (not a pickled object) lets `mlflow models
predict` and `mlflow.pyfunc.load_model` serve the model with ai-edge-litert and NumPy only, no
TensorFlow; `classifier.py` travels in the model's `code/` folder for use outside this project.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

try:
    from pipeline.inference.classifier import TFLiteClassifier, read_labels
except ImportError:  # loaded outside this project: the copy of classifier.py in the model's code/ folder
    from classifier import TFLiteClassifier, read_labels  # type: ignore[no-redef]


class TFLiteExpressionModel(PythonModel):
    """Input: raw gray faces uint8 [N, 48, 48]; output: scores float32 [N, 7] in the labels' order."""

    def load_context(self, context) -> None:
        labels = read_labels(context.artifacts["labels"])
        self.classifier = TFLiteClassifier(context.artifacts["tflite"], labels)

    # np.ndarray, a real type (no `from __future__ import annotations` here), is a hint MLflow infers no
    # schema from: the logged tensor signature stays the contract, and MLflow stops warning about hints.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        if isinstance(model_input, dict):  # a named tensor input arrives as {name: array}
            (model_input,) = model_input.values()
        faces = np.asarray(model_input)
        if faces.ndim == 2 and faces.shape[1] == 48 * 48:  # a DataFrame of flattened rows
            faces = faces.reshape(-1, 48, 48)
        return self.classifier.predict(faces.astype(np.uint8)).astype(np.float32)


mlflow.models.set_model(TFLiteExpressionModel())
