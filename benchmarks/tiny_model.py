"""An untrained 48x48 -> 7 classifier as .tflite + labels.json, for smoke runs of the realtime runner.

Tests and CI exercise the runner's contract (input [1,48,48,1] float32 raw pixels, 7 softmax scores in the
canonical order, LiteRT, every input and output), not accuracy, so they need a model in milliseconds rather
than a pipeline run. It is written directly as a TFLite flatbuffer (one fully connected layer, then softmax)
with the schema that ships inside ai-edge-litert, so it needs no TensorFlow and runs in the lean venv too.

    python benchmarks/tiny_model.py out/model.tflite
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # CONVENTIONS.md order


def _tensor(name: str, shape: list[int], buffer: int) -> tfl.TensorT:
    tensor = tfl.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name.encode(), np.array(shape, np.int32), 0, buffer
    return tensor  # type 0 = FLOAT32


def _operator(code: int, inputs: list[int], outputs: list[int], options_type: int, options: object) -> tfl.OperatorT:
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, np.array(inputs, np.int32), np.array(outputs, np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def make_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Write `path` and a labels.json beside it; softmax(W x + b) over the 2304 raw pixels, W random."""
    weights = np.random.default_rng(seed).standard_normal((len(CLASSES), 48 * 48)) / (255.0 * 48)
    data = [None, None, weights.astype(np.float32), np.zeros(len(CLASSES), np.float32), None, None]
    graph = tfl.SubGraphT()
    graph.name = b"main"
    graph.tensors = [_tensor("pixels", [1, 48, 48, 1], 1), _tensor("weights", [len(CLASSES), 48 * 48], 2),
                     _tensor("bias", [len(CLASSES)], 3), _tensor("logits", [1, len(CLASSES)], 4),
                     _tensor("scores", [1, len(CLASSES)], 5)]
    graph.inputs, graph.outputs = np.array([0], np.int32), np.array([4], np.int32)
    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 1.0
    graph.operators = [  # FULLY_CONNECTED flattens the 48x48x1 input itself
        _operator(0, [0, 1, 2], [3], tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsT()),
        _operator(1, [3], [4], tfl.BuiltinOptions.SoftmaxOptions, softmax)]
    codes = []
    for builtin in (tfl.BuiltinOperator.FULLY_CONNECTED, tfl.BuiltinOperator.SOFTMAX):
        code = tfl.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, builtin, 1
        codes.append(code)
    buffers = []
    for array in data:
        buffer = tfl.BufferT()
        buffer.data = None if array is None else np.frombuffer(array.tobytes(), np.uint8)
        buffers.append(buffer)
    model = tfl.ModelT()
    model.version, model.description = 3, b"tiny untrained test classifier (benchmarks/tiny_model.py)"
    model.operatorCodes, model.subgraphs, model.buffers = codes, [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(builder.Output())
    (path.parent / "labels.json").write_text(json.dumps(list(CLASSES)))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/tiny_model.py OUT.tflite")
    print(f"wrote {make_tiny_model(sys.argv[1])} and labels.json")
