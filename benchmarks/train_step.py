"""The `fer2013` preset's bare training step at one thread: images/s of `train_on_batch` on one fixed batch.

    .venv/bin/python benchmarks/train_step.py mixed_bfloat16 [--steps 6]
    ONEDNN_VERBOSE=1 .venv/bin/python benchmarks/train_step.py mixed_bfloat16 --steps 2 | grep exec

No input pipeline, no callbacks, one thread: the kernels' own gain from a precision, which
`benchmarks/train_speed.py` (the whole training path) then shows how much of survives. With
`ONEDNN_VERBOSE=1` it lists which oneDNN kernels ran (e.g. `brg_conv_fwd:avx10_1_512_amx` on AMX hosts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precision", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.config import compose, parse_params
    from pipeline.models import build_model
    from pipeline.timing import machine, machine_name

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.mixed_precision.set_global_policy(args.precision)
    params = parse_params(compose(["experiment=fer2013", "data=synthetic"]))
    net = build_model(params.model)
    net.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    batch = params.train.batch_size
    x = np.random.default_rng(0).integers(0, 256, (batch, 48, 48, 1)).astype("float32")
    y = np.eye(7, dtype="float32")[np.arange(batch) % 7]
    for _ in range(3):  # tracing and oneDNN's primitive creation
        net.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        net.train_on_batch(x, y)
    rate = args.steps * batch / (time.perf_counter() - start)
    print(f"{args.precision}: {rate:.0f} img/s, 1 thread, batch {batch}; {machine_name(machine())}", file=sys.stderr)


if __name__ == "__main__":
    main()
